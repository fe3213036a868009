//! The policy runtime's costs, on a chain of five modules (the built-in `networks`, five
//! times): one hook call through the chain, and setting up one session's instances at its
//! first hook (new instances, or `reset` on those an earlier session left; the cost of
//! the hook call itself is taken off).
//!
//!     cargo bench -p sluice --bench policy
//!
//! Timed with `std::time::Instant` over many iterations, best of several rounds (as
//! criterion's estimate would be, without its build cost in every `cargo test`).

use bytes::Bytes;
use sluice::policy::manifest::{Mode, ModuleSource, OnError, PolicySpec};
use sluice::policy::{Chain, HookSet, MessageData, PolicyEngine, SessionFacts};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODULES: usize = 5;
const ROUNDS: usize = 7;

/// A chain of [`MODULES`] copies of builtin:networks; `reuse`: sessions start on the
/// instances earlier ones left.
fn chain(engine: &PolicyEngine, reuse: bool) -> Arc<Chain> {
    let specs = (0..MODULES)
        .map(|i| PolicySpec {
            name: format!("networks-{i}"),
            source: ModuleSource::Builtin("networks".into()),
            mode: Mode::Enforce,
            on_error: OnError::Tempfail,
            timeout: Duration::from_millis(50),
            max_memory: 32 << 20,
            config: BTreeMap::new(),
            // Asked at every hook, as modules built with the SDK are.
            hooks: Some(HookSet::ALL),
            reuse,
        })
        .collect();
    Arc::new(Chain::from_specs(engine, specs).expect("the chain"))
}

fn main() {
    let engine = PolicyEngine::new(64).expect("the policy engine");
    let chain = chain(&engine, true);
    let fresh = self::chain(&engine, false);
    let facts = Arc::new(SessionFacts::new(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
        "bench",
    ));

    // As the relay runs it: hook calls are futures, awaited on a tokio runtime. Setting a
    // session up includes its first hook, since that is when the modules are instantiated.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let setup_new = runtime.block_on(best(2_000, async || {
        let mut session = fresh.start_session(facts.clone());
        black_box(session.on_connect().await);
    }));
    let setup = runtime.block_on(best(20_000, async || {
        let mut session = chain.start_session(facts.clone());
        black_box(session.on_connect().await);
    }));
    let connect = runtime.block_on(async {
        let mut session = chain.start_session(facts.clone());
        session.on_connect().await;
        best(200_000, async || {
            black_box(session.on_connect().await);
        })
        .await
    });
    let (setup, setup_new) = (setup - connect, setup_new - connect);
    let hook = runtime.block_on(async {
        let mut session = chain.start_session(facts.clone());
        session.on_connect().await;
        best(200_000, async || {
            black_box(session.on_helo("app.example.edu").await);
        })
        .await
    });
    println!("chain of {MODULES} modules");
    println!(
        "session setup, new instances:    {:>8.0} ns per session, {:>6.0} ns per module",
        setup_new,
        setup_new / MODULES as f64
    );
    println!(
        "session setup, reused instances: {:>8.0} ns per session, {:>6.0} ns per module",
        setup,
        setup / MODULES as f64
    );
    println!(
        "hook call:                       {:>8.0} ns per call,    {:>6.0} ns per module",
        hook,
        hook / MODULES as f64
    );

    // One module of the author's (SLUICE_BENCH_MODULE=FILE.wasm, as bench/languages.sh
    // builds the same rule in Rust, Python and JavaScript): what a session costs to set up
    // with it, and a call.
    if let Some(file) = std::env::var_os("SLUICE_BENCH_MODULE") {
        let one = |reuse| {
            let spec = PolicySpec {
                name: "module".into(),
                source: ModuleSource::File(file.clone().into()),
                mode: Mode::Enforce,
                on_error: OnError::Tempfail,
                timeout: Duration::from_secs(1),
                max_memory: 256 << 20,
                config: BTreeMap::new(),
                hooks: Some(HookSet::ALL),
                reuse,
            };
            Arc::new(Chain::from_specs(&engine, vec![spec]).expect("the module loads"))
        };
        let (reused, fresh) = (one(true), one(false));
        let connect = runtime.block_on(async {
            let mut session = reused.start_session(facts.clone());
            session.on_connect().await;
            best(20_000, async || {
                black_box(session.on_connect().await);
            })
            .await
        });
        let call = runtime.block_on(async {
            let mut session = reused.start_session(facts.clone());
            session.on_connect().await;
            best(20_000, async || {
                black_box(session.on_rcpt("user@example.org", &[]).await);
            })
            .await
        });
        let setup = runtime.block_on(best(2_000, async || {
            let mut session = reused.start_session(facts.clone());
            black_box(session.on_connect().await);
        }));
        let setup_new = runtime.block_on(best(200, async || {
            let mut session = fresh.start_session(facts.clone());
            black_box(session.on_connect().await);
        }));
        println!("module {}", file.to_string_lossy());
        println!(
            "  session setup, new instance:    {:>9.0} ns",
            setup_new - connect
        );
        println!(
            "  session setup, reused instance: {:>9.0} ns",
            setup - connect
        );
        println!("  rcpt hook call:                 {:>9.0} ns", call);
    }

    // The chain a campus runs (examples/campus), its sender and internal domains set to
    // the message's: every hook of a session of one message to one recipient.
    let campus = campus_chain(&engine);
    let message = MessageData::new(Bytes::from_static(MESSAGE));
    let headers = [
        ("From".to_string(), "app@bench.test".to_string()),
        ("Subject".to_string(), "report".to_string()),
    ];
    let session = runtime.block_on(best(20_000, async || {
        let mut s = campus.start_session(facts.clone());
        black_box(s.on_connect().await);
        black_box(s.on_helo("app.bench.test").await);
        black_box(s.on_mail_from("app@bench.test", &[]).await);
        black_box(s.on_rcpt("user@example.org", &[]).await);
        black_box(s.on_data(&headers, &message).await);
    }));
    let calls: u64 = campus.status().iter().map(|m| m.stats.calls).sum();
    let sessions = campus.status()[0].stats.calls.max(1);
    println!(
        "campus chain ({} modules, {} hook calls a message): {:>6.0} ns per message",
        campus.names().len(),
        calls / sessions,
        session
    );
    for m in campus.status() {
        let s = &m.stats;
        let per_message = s.micros as f64 * 1000.0 / sessions as f64;
        println!(
            "  {:<14} {:>6.0} ns per message ({} calls)",
            m.name,
            per_message,
            s.calls / sessions
        );
    }
}

const MESSAGE: &[u8] =
    b"From: app@bench.test\r\nSubject: report\r\n\r\nThe nightly report is ready.\r\n";

/// examples/campus/policies.toml, for mail from bench.test to example.org, without its
/// rate limits.
fn campus_chain(engine: &PolicyEngine) -> Arc<Chain> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/campus");
    let text = std::fs::read_to_string(dir.join("policies.toml")).expect("the campus chain");
    let text = text
        .replace(
            r#"domains = ["example.edu"]"#,
            r#"domains = ["bench.test"]"#,
        )
        .replace(
            r#"internal_domains = ["example.edu"]"#,
            r#"internal_domains = ["example.org"]"#,
        )
        // The bench sends far more than an hour's allowance.
        .replace("max_messages = 1000", "max_messages = 1000000000")
        .replace("max_recipients = 5000", "max_recipients = 1000000000");
    let specs = sluice::policy::manifest::parse(&text, &dir).expect("the campus chain parses");
    Arc::new(Chain::from_specs(engine, specs).expect("the campus chain loads"))
}

/// The best per-iteration time in nanoseconds over [`ROUNDS`] rounds of `n` iterations.
async fn best(n: u32, mut f: impl AsyncFnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..n {
            f().await;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(n));
    }
    best
}
