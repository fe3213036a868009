//! The chain's rules, on built-in modules run as the relay runs them: order, what ends a
//! hook's chain, rewrites, dry-run and `on_error`.

use super::*;
use crate::policy::manifest::{MAX_POLICIES, default_max_memory, default_timeout};
use std::net::SocketAddr;
use std::sync::OnceLock;

/// One engine for every test: modules compile once (its cache), as in the relay.
fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new(64).expect("the policy engine"))
}

/// A built-in module under `name`, enforcing, failing closed, with `config`.
fn module(name: &str, builtin: &str, config: &[(&str, ConfigValue)]) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        source: ModuleSource::Builtin(builtin.into()),
        mode: Mode::Enforce,
        on_error: OnError::Tempfail,
        timeout: default_timeout(),
        max_memory: default_max_memory(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        // Asked at every hook, so that these tests see the chain's rules at each.
        hooks: Some(HookSet::ALL),
        reuse: true,
    }
}

/// A module that cannot start: its memory limit is below what any module needs.
fn broken(name: &str, on_error: OnError) -> PolicySpec {
    PolicySpec {
        max_memory: 4096,
        on_error,
        ..module(name, "networks", &[])
    }
}

fn dry_run(spec: PolicySpec) -> PolicySpec {
    PolicySpec {
        mode: Mode::DryRun,
        ..spec
    }
}

/// What a session from `peer` shows the modules when it starts.
fn facts(peer: &str) -> SessionFacts {
    SessionFacts::new(
        SocketAddr::new(peer.parse().unwrap(), 40000),
        "127.0.0.1:25".parse().unwrap(),
        "test",
    )
}

/// A session from `peer` on a chain of `specs`.
fn session(peer: &str, specs: Vec<PolicySpec>) -> SessionChain {
    let chain = Arc::new(Chain::from_specs(engine(), specs).expect("the chain loads"));
    chain.start_session(Arc::new(facts(peer)))
}

/// The modules that had a say at `hook`, in order, with their outcomes.
fn asked(session: &SessionChain, hook: Hook) -> Vec<String> {
    session
        .trace
        .iter()
        .filter(|d| d.hook == hook)
        .map(|d| match &d.outcome {
            Ok(v) => format!("{}={}", d.module, v.as_str()),
            Err(_) => format!("{}=failed", d.module),
        })
        .collect()
}

const NO_PARAMS: &[(String, Option<String>)] = &[];

#[tokio::test]
async fn continue_asks_the_next_module_and_accept_ends_the_hook() {
    let mut s = session(
        "127.0.0.1",
        vec![
            module("helo", "helo", &[]),
            module("first", "networks", &[]),
            module("second", "networks", &[]),
        ],
    );
    let d = s.on_rcpt("a@example.org", NO_PARAMS).await;
    assert_eq!(d.verdict, Verdict::Accept);
    assert_eq!(d.decided_by.as_deref(), Some("first"));
    assert_eq!(asked(&s, Hook::Rcpt), ["helo=continue", "first=accept"]);
}

#[tokio::test]
async fn a_reject_ends_the_chain_with_the_modules_reply() {
    let mut s = session(
        "127.0.0.1",
        vec![
            module("helo", "helo", &[]),
            module("networks", "networks", &[]),
        ],
    );
    let d = s.on_helo("printer&scanner.example.edu").await;
    assert_eq!(d.verdict, Verdict::Reject);
    assert_eq!(d.decided_by.as_deref(), Some("helo"));
    let reply = d.reply.expect("the module's reply");
    assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.7.1"));
    assert_eq!(asked(&s, Hook::Helo), ["helo=reject"]);
    // A later EHLO is decided afresh: the refusal is not remembered in the trace.
    let d = s.on_helo("printer.example.edu").await;
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(
        asked(&s, Hook::Helo),
        ["helo=continue", "networks=continue"]
    );
}

#[tokio::test]
async fn a_tempfail_ends_the_chain() {
    // networks fails closed with 451 on a list it cannot read.
    let bad_list = ConfigValue::TextList(vec!["not a network".into()]);
    let mut s = session(
        "127.0.0.1",
        vec![
            module("networks", "networks", &[("relay_from", bad_list)]),
            module("other", "networks", &[]),
        ],
    );
    let d = s.on_rcpt("a@example.org", NO_PARAMS).await;
    assert_eq!(d.verdict, Verdict::Tempfail);
    assert_eq!(d.reply.map(|r| r.code), Some(451));
    assert_eq!(asked(&s, Hook::Rcpt), ["networks=tempfail"]);
}

#[tokio::test]
async fn a_dry_run_module_decides_nothing_but_is_traced() {
    let mut s = session(
        "127.0.0.1",
        vec![
            dry_run(module("helo", "helo", &[])),
            module("networks", "networks", &[]),
        ],
    );
    let d = s.on_helo("a&b.example.edu").await;
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.reply, None);
    assert_eq!(asked(&s, Hook::Helo), ["helo=reject", "networks=continue"]);
    assert!(s.trace.iter().any(|d| d.dry_run && &*d.module == "helo"));
}

#[tokio::test]
async fn rewrites_accumulate_in_chain_order_and_a_dry_run_modules_are_left_out() {
    let domains = ConfigValue::TextList(vec!["example.edu".into()]);
    let tag = ConfigValue::Text("tag".into());
    let config = [("domains", domains), ("mismatch", tag)];
    let mut s = session(
        "127.0.0.1",
        vec![
            module("first", "sender", &config),
            dry_run(module("trial", "sender", &config)),
            module("second", "sender", &config),
        ],
    );
    let in_transaction = SessionFacts {
        sender: Some("app@example.edu".into()),
        ..facts("127.0.0.1")
    };
    s.set_facts(&Arc::new(in_transaction));
    assert_eq!(
        s.on_mail_from("app@example.edu", NO_PARAMS).await.verdict,
        Verdict::Continue
    );
    let raw = b"From: other@example.edu\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
    let headers = vec![
        ("From".to_string(), "other@example.edu".to_string()),
        ("Subject".to_string(), "x".to_string()),
    ];
    let message = MessageData::new(bytes::Bytes::from(raw));
    let d = s.on_data(&headers, &message).await;
    assert_eq!(d.verdict, Verdict::Continue);
    let tags: Vec<_> = d
        .rewrites
        .iter()
        .map(|r| match r {
            Rewrite::AddHeader(name, _) => name.as_str(),
            other => panic!("unexpected rewrite {other:?}"),
        })
        .collect();
    // Two enforcing modules tagged; the dry-run module's tag is traced, not applied.
    assert_eq!(tags, ["X-Sluice-Sender-Mismatch"; 2]);
    let trial = s
        .trace
        .iter()
        .find(|d| &*d.module == "trial" && d.hook == Hook::Data);
    assert_eq!(trial.map(|d| d.rewrites.len()), Some(1));
}

#[tokio::test]
async fn a_failed_module_fails_closed_by_default_and_is_not_entered_again() {
    let mut s = session(
        "127.0.0.1",
        vec![
            broken("broken", OnError::Tempfail),
            module("networks", "networks", &[]),
        ],
    );
    let d = s.on_connect().await;
    assert_eq!(d.verdict, Verdict::Tempfail);
    let reply = d.reply.expect("a reply");
    assert_eq!((reply.code, reply.enhanced.as_str()), (451, "4.3.0"));
    let failure = s.trace[0].outcome.as_ref().unwrap_err();
    assert!(failure.starts_with("failed to start"), "{failure}");
    let d = s.on_helo("app.example.edu").await;
    assert_eq!(d.verdict, Verdict::Tempfail);
    let failure = s.trace.last().unwrap().outcome.as_ref().unwrap_err();
    assert_eq!(failure, "failed earlier in this session");
}

#[tokio::test]
async fn on_error_continue_skips_a_failed_module_visibly() {
    let mut s = session(
        "127.0.0.1",
        vec![
            broken("broken", OnError::Continue),
            module("networks", "networks", &[]),
        ],
    );
    let d = s.on_rcpt("a@example.org", NO_PARAMS).await;
    assert_eq!(d.verdict, Verdict::Accept);
    assert_eq!(asked(&s, Hook::Rcpt), ["broken=failed", "networks=accept"]);
}

#[tokio::test]
async fn a_dry_run_module_that_fails_does_not_fail_the_mail() {
    let mut s = session(
        "127.0.0.1",
        vec![
            dry_run(broken("trial", OnError::Tempfail)),
            module("networks", "networks", &[]),
        ],
    );
    let d = s.on_rcpt("a@example.org", NO_PARAMS).await;
    assert_eq!(d.verdict, Verdict::Accept);
}

#[tokio::test]
async fn modules_see_the_facts_the_session_publishes() {
    // networks decides by the peer it is shown; a new snapshot changes what it sees.
    let mut s = session("192.0.2.7", vec![module("networks", "networks", &[])]);
    assert_eq!(
        s.on_rcpt("a@example.org", NO_PARAMS).await.verdict,
        Verdict::Reject
    );
    s.set_facts(&Arc::new(facts("127.0.0.1")));
    assert_eq!(
        s.on_rcpt("a@example.org", NO_PARAMS).await.verdict,
        Verdict::Accept
    );
}

#[tokio::test]
async fn the_transaction_trace_is_taken_and_the_sessions_part_kept() {
    let mut s = session("127.0.0.1", vec![module("networks", "networks", &[])]);
    s.on_connect().await;
    s.on_helo("app.example.edu").await;
    s.on_mail_from("app@example.edu", NO_PARAMS).await;
    s.on_rcpt("a@example.org", NO_PARAMS).await;
    let taken = s.take_transaction_trace();
    assert_eq!(taken.len(), 4);
    let hooks: Vec<Hook> = s.trace.iter().map(|d| d.hook).collect();
    assert_eq!(hooks, [Hook::Connect, Hook::Helo]);
}

#[tokio::test]
async fn within_answers_what_finishes_and_drops_what_waits_past_its_limit() {
    let limit = |ms| Instant::now() + Duration::from_millis(ms);
    assert_eq!(within(limit(20), async { 7 }).await, Some(7));
    let waits = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        8
    };
    // Far more than the 10 ms it waits: the other tests compile modules on the same cores.
    assert_eq!(within(limit(5_000), waits).await, Some(8));
    assert_eq!(within(limit(20), std::future::pending::<u8>()).await, None);
}

#[tokio::test]
async fn running_out_of_instances_fails_closed_whatever_on_error_says() {
    // A pool for one session: MAX_POLICIES instances, so with one module per session
    // the pool is full after that many sessions.
    let engine = PolicyEngine::new(1).expect("the policy engine");
    let fail_open = PolicySpec {
        on_error: OnError::Continue,
        ..module("rate-limit", "networks", &[])
    };
    let chain = Arc::new(Chain::from_specs(&engine, vec![fail_open]).expect("the chain loads"));
    let mut sessions = Vec::new();
    for _ in 0..MAX_POLICIES {
        let mut s = chain.start_session(Arc::new(facts("127.0.0.1")));
        let decision = s.on_connect().await;
        assert_eq!(decision.verdict, Verdict::Continue);
        sessions.push(s);
    }
    // One session too many: the module cannot be had, and `continue` must not skip it.
    let mut over = chain.start_session(Arc::new(facts("127.0.0.1")));
    let decision = over.on_connect().await;
    assert_eq!(decision.verdict, Verdict::Tempfail);
    let reply = decision.reply.expect("a reply");
    assert_eq!((reply.code, reply.enhanced.as_str()), (421, "4.3.2"));
    let decision = over.on_mail_from("a@example.edu", NO_PARAMS).await;
    assert_eq!(decision.reply.map(|r| r.code), Some(451));
    // Capacity given back, the same session is served: the module was not written off.
    sessions.pop();
    let decision = over.on_mail_from("a@example.edu", NO_PARAMS).await;
    assert_eq!(decision.verdict, Verdict::Continue, "{:?}", decision.reply);
}

#[tokio::test]
async fn a_module_is_started_and_asked_only_at_the_hooks_it_implements() {
    let rcpt_only = PolicySpec {
        hooks: None,
        reuse: true,
        ..module("networks", "networks", &[])
    };
    let everywhere = module("all", "helo", &[]);
    let mut s = session("127.0.0.1", vec![rcpt_only, everywhere]);
    s.on_connect().await;
    s.on_helo("client.example").await;
    s.on_mail_from("a@example.edu", NO_PARAMS).await;
    // builtin:networks decides at RCPT only: not started before, not asked before.
    assert!(matches!(s.slots[0], Slot::NotStarted));
    assert_eq!(asked(&s, Hook::Connect), ["all=continue"]);
    s.on_rcpt("b@example.org", NO_PARAMS).await;
    assert!(matches!(s.slots[0], Slot::Running(_)));
    assert_eq!(asked(&s, Hook::Rcpt)[0], "networks=accept");
}

#[test]
fn a_manifest_names_the_hooks_a_module_is_asked_at() {
    let text = "[[policy]]\nname = \"d\"\nmodule = \"d.wasm\"\nhooks = [\"rcpt\", \"data\"]\n";
    let specs = manifest::parse(text, Path::new("/p")).expect("parses");
    assert_eq!(specs[0].hooks, Some(HookSet::of(&[Hook::Rcpt, Hook::Data])));
    let bad = "[[policy]]\nname = \"d\"\nmodule = \"d.wasm\"\nhooks = [\"quit\"]\n";
    assert!(manifest::parse(bad, Path::new("/p")).is_err());
}

/// A chain of builtin:networks relaying for 127.0.0.0/8, with `reuse` as given.
fn relaying_chain(reuse: bool) -> Arc<Chain> {
    let relay_from = ConfigValue::TextList(vec!["127.0.0.0/8".into()]);
    let spec = PolicySpec {
        reuse,
        ..module("networks", "networks", &[("relay_from", relay_from)])
    };
    Arc::new(Chain::from_specs(engine(), vec![spec]).expect("the chain loads"))
}

/// What the module decides for a recipient in a session from `peer`, which then ends.
async fn rcpt_from(chain: &Arc<Chain>, peer: &str) -> Verdict {
    let mut s = chain.start_session(Arc::new(facts(peer)));
    s.on_rcpt("b@example.org", NO_PARAMS).await.verdict
}

#[tokio::test]
async fn a_later_session_starts_on_the_instance_an_ended_session_left() {
    let chain = relaying_chain(true);
    assert_eq!(rcpt_from(&chain, "127.0.0.1").await, Verdict::Accept);
    // The same instance, with the new session's facts: this client is refused.
    assert_eq!(rcpt_from(&chain, "192.0.2.1").await, Verdict::Reject);
    assert_eq!(rcpt_from(&chain, "127.0.0.2").await, Verdict::Accept);
    let stats = chain.modules[0].stats.snapshot();
    assert_eq!((stats.instances, stats.reused), (1, 2));
}

#[tokio::test]
async fn reuse_false_makes_an_instance_for_every_session() {
    let chain = relaying_chain(false);
    assert_eq!(rcpt_from(&chain, "127.0.0.1").await, Verdict::Accept);
    assert_eq!(rcpt_from(&chain, "192.0.2.1").await, Verdict::Reject);
    let stats = chain.modules[0].stats.snapshot();
    assert_eq!((stats.instances, stats.reused), (2, 0));
}

#[tokio::test]
async fn sessions_at_once_get_instances_of_their_own_and_leave_them_for_later() {
    let chain = relaying_chain(true);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut s = chain.start_session(Arc::new(facts("127.0.0.1")));
        s.on_rcpt("b@example.org", NO_PARAMS).await;
        sessions.push(s);
    }
    drop(sessions);
    assert_eq!(chain.modules[0].idle.lock().unwrap().len(), 3);
    rcpt_from(&chain, "127.0.0.1").await;
    let stats = chain.modules[0].stats.snapshot();
    assert_eq!((stats.instances, stats.reused), (3, 1));
}

#[tokio::test]
async fn instances_kept_for_later_give_their_places_to_a_module_that_needs_one() {
    // A pool for one session of the longest chain. Module `a` decides at connect, `b` at
    // rcpt; sessions that ended at connect left the pool full of `a`s.
    let engine = PolicyEngine::new(1).expect("the policy engine");
    let relay_from = ConfigValue::TextList(vec!["127.0.0.0/8".into()]);
    let at = |name: &str, hook: Hook| PolicySpec {
        hooks: Some(HookSet::of(&[hook])),
        ..module(name, "networks", &[("relay_from", relay_from.clone())])
    };
    let specs = vec![at("a", Hook::Connect), at("b", Hook::Rcpt)];
    let chain = Arc::new(Chain::from_specs(&engine, specs).expect("the chain loads"));
    let mut sessions = Vec::new();
    for _ in 0..MAX_POLICIES {
        let mut s = chain.start_session(Arc::new(facts("127.0.0.1")));
        assert_eq!(s.on_connect().await.verdict, Verdict::Continue);
        sessions.push(s);
    }
    drop(sessions);
    let mut s = chain.start_session(Arc::new(facts("127.0.0.1")));
    assert_eq!(s.on_connect().await.verdict, Verdict::Continue);
    let d = s.on_rcpt("b@example.org", NO_PARAMS).await;
    assert_eq!(d.verdict, Verdict::Accept, "{:?}", d.reply);
}

#[tokio::test]
async fn a_chain_replaced_by_a_reload_keeps_no_instance() {
    let chain = relaying_chain(true);
    let mut open = chain.start_session(Arc::new(facts("127.0.0.1")));
    open.on_rcpt("b@example.org", NO_PARAMS).await;
    rcpt_from(&chain, "127.0.0.1").await;
    assert_eq!(chain.modules[0].idle.lock().unwrap().len(), 1);
    chain.retire();
    assert_eq!(chain.modules[0].idle.lock().unwrap().len(), 0);
    // A session that was open at the reload finishes on the old chain, and leaves nothing.
    drop(open);
    assert_eq!(chain.modules[0].idle.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn an_instance_idle_too_long_is_let_go() {
    let chain = relaying_chain(true);
    rcpt_from(&chain, "127.0.0.1").await;
    let module = &chain.modules[0];
    module.trim_idle(Instant::now());
    assert_eq!(module.idle.lock().unwrap().len(), 1, "not idle long yet");
    module.trim_idle(Instant::now() + MAX_IDLE_TIME + Duration::from_secs(1));
    assert_eq!(module.idle.lock().unwrap().len(), 0);
}

#[test]
fn a_core_module_is_refused_with_how_to_build_a_component() {
    // The smallest core module: the magic and version 1, no sections.
    let refused = engine()
        .inspect(b"\0asm\x01\0\0\0")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("a core WebAssembly module, not a component")
            && refused.contains("wasm32-wasip2")
            && refused.contains("componentize-py")
            && refused.contains("componentize-js"),
        "{refused}"
    );
}
