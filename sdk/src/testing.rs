//! Unit tests for a policy, in plain `cargo test`, without the relay.
//!
//! A [`Session`] plays the relay's part: it holds what the relay would tell the module
//! (the client, TLS, the module's configuration, the clock, counters) and calls the
//! hooks in SMTP order, keeping the envelope as the relay would.
//!
//! ```
//! use sluice_sdk::{Context, Decision, Policy, Verdict};
//! use sluice_sdk::testing::Session;
//!
//! #[derive(Default)]
//! struct NoAmpersand;
//!
//! impl Policy for NoAmpersand {
//!     fn on_helo(&mut self, _cx: &Context, name: &str) -> Decision {
//!         if name.contains('&') {
//!             return Decision::reject(550, "5.7.1", "No & in HELO");
//!         }
//!         Decision::next()
//!     }
//! }
//!
//! let mut session = Session::<NoAmpersand>::new().peer("10.1.2.3");
//! assert_eq!(session.helo("a&b.example.edu").verdict, Verdict::Reject);
//! assert_eq!(session.helo("app.example.edu").verdict, Verdict::Continue);
//! ```
//!
//! The session checks every decision as the relay does, and panics — failing the test,
//! with what is wrong and what the relay would do — on one the relay would not take as it
//! is:
//!
//! - a reply whose code does not fit the verdict (a reject needs 5xx, a tempfail 4xx, any
//!   other verdict 2xx), that is no SMTP code, or whose enhanced status code is not
//!   `class.subject.detail` of the code's class: the relay counts the module as failed;
//! - reply text with a control character (CR, LF, ...) or over 400 bytes: the relay sends
//!   it cleaned and cut;
//! - discard or quarantine before the data hook: the relay takes it as "no opinion";
//! - a rewrite the relay ignores: an invalid address or header field, an envelope rewrite
//!   before MAIL, `replace-recipient` outside the rcpt hook.
//!
//! Counters count as the relay's do (an estimate from two fixed windows, which may differ
//! from an exact count by a little near a window's edge; keys cut to 256 bytes), so a rate
//! limit's test sees the relay's numbers. Move the clock with [`Session::advance`].

use crate::__bindings::sluice::policy::types::{ConnectionInfo, TlsInfo};
use crate::imports::{ConfigValue, Level, Registration, Standing};
use crate::{Body, Context, Decision, Header, Policy, Rewrite, Verdict};
use sluice_mail::address::valid_address;
use sluice_mail::counter::{self, Counter};
use sluice_mail::mime::{self, valid_field_name, valid_field_value};
use sluice_mail::reply::{self, ReplyClass, ReplyError};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// What the relay would tell the module, during a test.
pub(crate) struct Env {
    pub connection: ConnectionInfo,
    pub helo: Option<String>,
    pub tls: Option<TlsInfo>,
    pub authenticated_user: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub config: BTreeMap<String, ConfigValue>,
    /// Whether the module is told it runs in dry-run.
    pub dry_run: bool,
    pub now_ms: u64,
    /// Recipients the module asked to be delivered over TLS only.
    pub tls_required: Vec<String>,
    /// The registry: `(network, department)` registered, `(network, reason)` blocked.
    registered: Vec<(String, String)>,
    blocked: Vec<(String, String)>,
    /// The module's counters, by key (as cut) and window, as the relay keeps them.
    counted: HashMap<(String, u32), Counter>,
    logs: Vec<String>,
}

impl Env {
    pub fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        let mut line = format!("{level:?}:").to_lowercase();
        for (key, value) in fields {
            line.push_str(&format!(" {key}={value}"));
        }
        line.push(' ');
        line.push_str(message);
        self.logs.push(line);
    }

    /// The standing of `ip` in the simulated registry (the most specific entry answers,
    /// as in the relay).
    pub fn standing(&self, ip: &str) -> Standing {
        let most_specific = |entries: &[(String, String)]| {
            let ip: std::net::IpAddr = ip.parse().ok()?;
            entries
                .iter()
                .filter_map(|(network, value)| {
                    let net = crate::Networks::parse(&[network]).ok()?;
                    net.contains(ip)
                        .then(|| (prefix_len(network), network, value))
                })
                .max_by_key(|(len, _, _)| *len)
                .map(|(_, network, value)| (network.clone(), value.clone()))
        };
        Standing {
            registration: most_specific(&self.registered).map(|(network, department)| {
                Registration {
                    network,
                    department,
                }
            }),
            blocked: most_specific(&self.blocked).map(|(_, reason)| reason),
        }
    }

    /// Counts as the relay does (`counters.incr` and `peek`). The relay also bounds the
    /// keys a module may keep (tens of thousands); a unit test never comes near that.
    pub fn count(&mut self, key: &str, window_secs: u32, add: bool) -> u64 {
        let now = self.now_ms;
        self.counted
            .entry((counter::key(key).to_string(), window_secs))
            .or_insert_with(|| Counter::new(window_secs, now))
            .count(u64::from(add), now)
    }
}

fn prefix_len(network: &str) -> u8 {
    network
        .split_once('/')
        .and_then(|(_, len)| len.parse().ok())
        .unwrap_or(128)
}

thread_local! {
    static CURRENT: RefCell<Option<Env>> = const { RefCell::new(None) };
}

/// Runs `f` on the environment of the hook being tested.
pub(crate) fn with_env<R>(f: impl FnOnce(&mut Env) -> R) -> R {
    CURRENT.with(|current| {
        let mut current = current.borrow_mut();
        let env = current.as_mut().expect(
            "sluice-sdk: the relay's functions answer only inside a hook; in unit tests, call hooks through sluice_sdk::testing::Session",
        );
        f(env)
    })
}

/// When a session's clock starts (unless [`Session::at`] sets it): 2027-01-15 08:00 UTC, a
/// Friday morning; the Python and JavaScript SDKs' sessions start there too.
pub const START_MS: u64 = 1_800_000_000_000;

/// A value for [`Session::config`]: text (`"x"`), an integer, a boolean, or a list of
/// text (`["a", "b"]` or a `Vec<String>`), as a `[policy.config]` table may hold.
pub struct Setting(ConfigValue);

impl From<&str> for Setting {
    fn from(v: &str) -> Self {
        Setting(ConfigValue::Text(v.into()))
    }
}
impl From<i64> for Setting {
    fn from(v: i64) -> Self {
        Setting(ConfigValue::Integer(v))
    }
}
impl From<bool> for Setting {
    fn from(v: bool) -> Self {
        Setting(ConfigValue::Boolean(v))
    }
}
impl<const N: usize> From<[&str; N]> for Setting {
    fn from(v: [&str; N]) -> Self {
        Setting(ConfigValue::TextList(
            v.iter().map(|s| s.to_string()).collect(),
        ))
    }
}
impl From<Vec<String>> for Setting {
    fn from(v: Vec<String>) -> Self {
        Setting(ConfigValue::TextList(v))
    }
}

/// One simulated SMTP session with one instance of the policy `P`.
pub struct Session<P: Policy> {
    policy: P,
    env: Option<Env>,
}

impl<P: Policy> Default for Session<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Policy> Session<P> {
    /// A session from 127.0.0.1 on the listener "default", with no configuration.
    pub fn new() -> Self {
        Session {
            policy: P::default(),
            env: Some(Env {
                connection: ConnectionInfo {
                    peer_ip: "127.0.0.1".into(),
                    peer_port: 40000,
                    local_ip: "127.0.0.1".into(),
                    local_port: 25,
                    listener: "default".into(),
                },
                helo: None,
                tls: None,
                authenticated_user: None,
                sender: None,
                recipients: Vec::new(),
                config: BTreeMap::new(),
                dry_run: false,
                now_ms: START_MS,
                tls_required: Vec::new(),
                registered: Vec::new(),
                blocked: Vec::new(),
                counted: HashMap::new(),
                logs: Vec::new(),
            }),
        }
    }

    fn env(&mut self) -> &mut Env {
        self.env
            .as_mut()
            .expect("the environment is back after each hook")
    }

    /// The client's IP address.
    pub fn peer(mut self, ip: &str) -> Self {
        self.env().connection.peer_ip = ip.into();
        self
    }

    /// The listener's name.
    pub fn listener(mut self, name: &str) -> Self {
        self.env().connection.listener = name.into();
        self
    }

    /// The client has negotiated TLS (as if after STARTTLS).
    pub fn tls(mut self) -> Self {
        self.env().tls = Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        });
        self
    }

    /// The client has authenticated as `user`.
    pub fn authenticated(mut self, user: &str) -> Self {
        self.env().authenticated_user = Some(user.into());
        self
    }

    /// The relay registry has `network` ("192.0.2.7" or "10.20.0.0/16") registered for
    /// `department`.
    pub fn registered(mut self, network: &str, department: &str) -> Self {
        self.env()
            .registered
            .push((network.into(), department.into()));
        self
    }

    /// The postmaster blocked `network`, for `reason`.
    pub fn blocked(mut self, network: &str, reason: &str) -> Self {
        self.env().blocked.push((network.into(), reason.into()));
        self
    }

    /// The module runs in dry-run: [`Context::dry_run`] says so.
    pub fn dry_run(mut self) -> Self {
        self.env().dry_run = true;
        self
    }

    /// What the module's [`Policy::validate_config`] says of the configuration set so
    /// far, as the relay asks it when it loads the module.
    pub fn validate_config(&mut self) -> Result<(), String> {
        CURRENT.with(|c| *c.borrow_mut() = self.env.take());
        let checked = P::validate_config(&Context::new());
        self.env = CURRENT.with(|c| c.borrow_mut().take());
        checked
    }

    /// A key of the module's `[policy.config]`.
    pub fn config(mut self, key: &str, value: impl Into<Setting>) -> Self {
        self.env().config.insert(key.into(), value.into().0);
        self
    }

    /// Sets the clock (Unix milliseconds) for rules that depend on the time; a session
    /// starts at [`START_MS`].
    pub fn at(mut self, unix_ms: u64) -> Self {
        self.env().now_ms = unix_ms;
        self
    }

    /// Moves the clock on (for counters with a time window).
    pub fn advance(&mut self, millis: u64) {
        self.env().now_ms += millis;
    }

    /// The recipients the module asked to be delivered over TLS only, in this transaction.
    pub fn tls_required(&mut self) -> Vec<String> {
        self.env().tls_required.clone()
    }

    /// What the module has logged so far, one line each: `level: key=value message`.
    pub fn logs(&mut self) -> Vec<String> {
        self.env().logs.clone()
    }

    /// Runs one hook with the environment in place, and checks its decision as the relay
    /// would (see the [module documentation](self)): the test fails on one the relay would
    /// not take as it is.
    fn call(&mut self, hook: Hook, run: impl FnOnce(&mut P, &Context) -> Decision) -> Decision {
        // The relay does not call a policy at a hook it does not declare.
        if !P::HOOKS.contains(&hook.contract_name()) {
            return Decision::next();
        }
        CURRENT.with(|c| *c.borrow_mut() = self.env.take());
        let decision = run(&mut self.policy, &Context::new());
        self.env = CURRENT.with(|c| c.borrow_mut().take());
        if let Err(refused) = check(hook, &decision) {
            panic!(
                "sluice-sdk: {} returned {decision:?}, which the relay would not take as it is: {}",
                hook.name(),
                with_causes(&refused)
            );
        }
        decision
    }

    /// The client connects.
    pub fn connect(&mut self) -> Decision {
        self.call(Hook::Connect, |p, cx| p.on_connect(cx))
    }

    /// HELO/EHLO with `name`.
    pub fn helo(&mut self, name: &str) -> Decision {
        self.env().helo = Some(name.into());
        self.call(Hook::Helo, |p, cx| p.on_helo(cx, name))
    }

    /// MAIL FROM; the transaction starts unless the module refuses.
    pub fn mail_from(&mut self, sender: &str) -> Decision {
        self.mail_from_with(sender, &[])
    }

    /// MAIL FROM with ESMTP parameters, as the relay hands them: `[("SIZE", Some("5000"))]`.
    pub fn mail_from_with(&mut self, sender: &str, params: &[(&str, Option<&str>)]) -> Decision {
        let params: Vec<(String, Option<String>)> = params
            .iter()
            .map(|(name, value)| (name.to_string(), value.map(str::to_string)))
            .collect();
        self.env().sender = Some(sender.into());
        self.env().recipients.clear();
        // A new transaction: what the module asked of the last one's delivery is gone.
        self.env().tls_required.clear();
        let decision = self.call(Hook::MailFrom, |p, cx| p.on_mail_from(cx, sender, &params));
        if refused(&decision) {
            self.env().sender = None;
        }
        decision
    }

    /// RCPT TO; the recipient is added unless the module refuses it. (In the relay a
    /// recipient also needs some module to accept it; here the module is tested alone, and
    /// "no opinion" stands for the rest of the chain accepting.)
    pub fn rcpt(&mut self, recipient: &str) -> Decision {
        let decision = self.call(Hook::Rcpt, |p, cx| p.on_rcpt(cx, recipient, &[]));
        if !refused(&decision) {
            self.env().recipients.push(recipient.into());
        }
        decision
    }

    /// The message (header fields, blank line, body; CRLF line ends).
    pub fn data(&mut self, message: &[u8]) -> Decision {
        let headers: Vec<Header> = mime::header_fields(message)
            .into_iter()
            .map(|f| Header {
                name: f.name,
                value: f.value,
            })
            .collect();
        let body = Body::for_test(message);
        self.call(Hook::Data, |p, cx| p.on_data(cx, &headers, &body))
    }
}

fn refused(d: &Decision) -> bool {
    matches!(d.verdict, Verdict::Reject | Verdict::Tempfail)
}

/// The hook a decision came from: what a decision may do depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    Helo,
    MailFrom,
    Rcpt,
    Data,
}

impl Hook {
    /// The hook's name in the contract and `policies.toml`.
    fn contract_name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Helo => "helo",
            Hook::MailFrom => "mail-from",
            Hook::Rcpt => "rcpt",
            Hook::Data => "data",
        }
    }

    /// The hook's name in [`Policy`].
    fn name(self) -> &'static str {
        match self {
            Hook::Connect => "on_connect",
            Hook::Helo => "on_helo",
            Hook::MailFrom => "on_mail_from",
            Hook::Rcpt => "on_rcpt",
            Hook::Data => "on_data",
        }
    }
}

/// Why the relay would not take a decision as it is.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The relay counts the module as failed, and its `on_error` applies.
    #[error("its reply is invalid, and the relay counts the module as failed (on_error applies)")]
    Reply(#[source] ReplyError),
    /// The relay sends the text cleaned and cut.
    #[error("the relay would change its reply text")]
    Text(#[source] ReplyError),
    /// Discard and quarantine mean something only at the data hook.
    #[error("{0:?} means something only at the data hook; the relay takes it as continue")]
    NotAtData(Verdict),
    /// The relay ignores this rewrite.
    #[error("the relay ignores the rewrite {rewrite:?}: {why}")]
    Rewrite {
        /// The rewrite.
        rewrite: Rewrite,
        /// Why the relay ignores it.
        why: &'static str,
    },
}

/// `error` and its causes, on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        line.push_str(": ");
        line.push_str(&error.to_string());
        cause = error.source();
    }
    line
}

/// Checks a decision from `hook` as the relay does (the reply as the policy chain checks
/// it, the rewrites as the SMTP session applies them).
fn check(hook: Hook, decision: &Decision) -> Result<(), Refused> {
    if let Some(r) = &decision.reply {
        let class = match decision.verdict {
            Verdict::Reject => ReplyClass::Permanent,
            Verdict::Tempfail => ReplyClass::Transient,
            _ => ReplyClass::Positive,
        };
        reply::check(class, r.code, &r.enhanced).map_err(Refused::Reply)?;
        reply::check_text(&r.text).map_err(Refused::Text)?;
    }
    if matches!(decision.verdict, Verdict::Discard | Verdict::Quarantine) && hook != Hook::Data {
        return Err(Refused::NotAtData(decision.verdict));
    }
    for rewrite in &decision.rewrites {
        if let Some(why) = ignored(hook, rewrite) {
            return Err(Refused::Rewrite {
                rewrite: rewrite.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// Why the relay would ignore `rewrite` from `hook`, if it would.
fn ignored(hook: Hook, rewrite: &Rewrite) -> Option<&'static str> {
    const BAD_ADDRESS: &str = "not an address the relay passes on (something@something, no space, control character or angle bracket, at most 320 bytes)";
    const BAD_FIELD: &str = "not a valid header field (a name of printable ASCII without colon; a value without CR, LF or other control character, at most 4096 bytes)";
    let before_mail = matches!(hook, Hook::Connect | Hook::Helo);
    match rewrite {
        Rewrite::AddHeader(h) | Rewrite::ReplaceHeader(h) => {
            (!valid_field_name(&h.name) || !valid_field_value(&h.value)).then_some(BAD_FIELD)
        }
        Rewrite::RemoveHeader(name) => (!valid_field_name(name)).then_some(BAD_FIELD),
        Rewrite::SetSender(_) | Rewrite::ReplaceRecipient(_) | Rewrite::AddRecipient(_)
            if before_mail =>
        {
            Some("an envelope rewrite before MAIL, when there is no envelope yet")
        }
        Rewrite::ReplaceRecipient(_) if hook != Hook::Rcpt => {
            Some("replace-recipient means something only at the rcpt hook")
        }
        Rewrite::SetSender(sender) => {
            (!sender.is_empty() && !valid_address(sender)).then_some(BAD_ADDRESS)
        }
        Rewrite::ReplaceRecipient(address) | Rewrite::AddRecipient(address) => {
            (!valid_address(address)).then_some(BAD_ADDRESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reply;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    /// Answers at the rcpt hook what its configuration says: `verdict`, `code`, `enhanced`,
    /// `text`, and a rewrite `rewrite` = `["add-header" | "add-recipient" | ..., value]`.
    #[derive(Default)]
    struct Says;

    impl Policy for Says {
        fn on_rcpt(&mut self, cx: &Context, _: &str, _: &[(String, Option<String>)]) -> Decision {
            let verdict = match cx.config_str("verdict").as_deref() {
                Some("accept") => Verdict::Accept,
                Some("tempfail") => Verdict::Tempfail,
                Some("discard") => Verdict::Discard,
                Some("continue") => Verdict::Continue,
                _ => Verdict::Reject,
            };
            let reply = cx.config_int("code").map(|code| Reply {
                code: code as u16,
                enhanced: cx.config_str("enhanced").unwrap_or_default(),
                text: cx.config_str("text").unwrap_or_else(|| "No".into()),
            });
            let decision = Decision {
                verdict,
                reply,
                rewrites: Vec::new(),
            };
            match cx.config_list("rewrite").as_deref() {
                Some([kind, value]) => match kind.as_str() {
                    "add-header" => decision.add_header(value, "1"),
                    "header-value" => decision.add_header("X-Test", value),
                    "remove-header" => decision.remove_header(value),
                    "set-sender" => decision.set_sender(value),
                    "add-recipient" => decision.add_recipient(value),
                    _ => decision.replace_recipient(value),
                },
                _ => decision,
            }
        }
    }

    /// The session's panic message for the decision `session` makes at rcpt.
    fn refusal(session: Session<Says>) -> String {
        let mut session = session;
        let panic = catch_unwind(AssertUnwindSafe(|| session.rcpt("u@example.org")))
            .expect_err("the session took a decision the relay would not");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    fn says(verdict: &str, code: i64, enhanced: &str) -> Session<Says> {
        Session::new()
            .config("verdict", verdict)
            .config("code", code)
            .config("enhanced", enhanced)
    }

    #[test]
    fn takes_replies_the_relay_takes() {
        for (verdict, code, enhanced) in [
            ("reject", 550, "5.7.1"),
            ("reject", 554, "5.7.0"),
            ("tempfail", 451, "4.3.0"),
            ("accept", 250, "2.1.5"),
            ("continue", 250, "2.0.0"),
        ] {
            let decision = says(verdict, code, enhanced).rcpt("u@example.org");
            assert_eq!(decision.code(), Some(code as u16));
        }
        // No reply at all leaves it to the relay.
        let mut bare = Session::<Says>::new().config("verdict", "tempfail");
        assert_eq!(bare.rcpt("u@example.org").verdict, Verdict::Tempfail);
    }

    #[test]
    fn fails_a_code_that_does_not_fit_the_verdict() {
        let message = refusal(says("reject", 450, "4.7.1"));
        assert!(
            message.starts_with("sluice-sdk: on_rcpt returned Decision { verdict: Verdict::Reject"),
            "{message}"
        );
        assert!(
            message.ends_with(
                "which the relay would not take as it is: its reply is invalid, and the relay counts the module as failed (on_error applies): reply code 450 does not fit the decision, which needs a 5xx code"
            ),
            "{message}"
        );
        assert!(refusal(says("tempfail", 550, "5.7.1")).contains("needs a 4xx code"));
        assert!(refusal(says("accept", 550, "5.7.1")).contains("needs a 2xx code"));
        assert!(refusal(says("reject", 599, "5.9.9")).contains("not an SMTP reply code"));
    }

    #[test]
    fn fails_an_invalid_enhanced_code() {
        for enhanced in ["4.7.1", "5.7", "", "5.7.1 "] {
            let message = refusal(says("reject", 550, enhanced));
            assert!(
                message.contains(&format!(
                    "enhanced status code {enhanced:?} does not fit reply code 550"
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn fails_text_the_relay_would_change() {
        let smuggler = says("reject", 550, "5.7.1").config("text", "no\r\n250 2.0.0 ok");
        assert!(refusal(smuggler).contains("the relay would change its reply text: reply text \"no\\r\\n250 2.0.0 ok\" has control characters"));
        let long = "x".repeat(401);
        let long = says("reject", 550, "5.7.1").config("text", long.as_str());
        assert!(refusal(long).contains("reply text is 401 bytes long; the relay cuts it to 400"));
    }

    #[test]
    fn fails_discard_before_the_data_hook() {
        let message = refusal(Session::new().config("verdict", "discard"));
        assert!(
            message.ends_with(
                "Discard means something only at the data hook; the relay takes it as continue"
            ),
            "{message}"
        );
    }

    #[test]
    fn fails_rewrites_the_relay_ignores() {
        let accept = || Session::<Says>::new().config("verdict", "accept");
        for (kind, value, why) in [
            ("add-header", "X Bad", "not a valid header field"),
            (
                "header-value",
                "a\r\nBcc: x@example.org",
                "not a valid header field",
            ),
            ("remove-header", "", "not a valid header field"),
            (
                "set-sender",
                "a@b> X=y",
                "not an address the relay passes on",
            ),
            (
                "add-recipient",
                "nodomain",
                "not an address the relay passes on",
            ),
            (
                "replace-recipient",
                "<a@b>",
                "not an address the relay passes on",
            ),
        ] {
            let message = refusal(accept().config("rewrite", [kind, value]));
            assert!(
                message.contains("the relay ignores the rewrite"),
                "{message}"
            );
            assert!(message.contains(why), "{kind} {value:?}: {message}");
        }
        let mut fine = accept().config("rewrite", ["set-sender", ""]);
        assert_eq!(fine.rcpt("u@example.org").rewrites.len(), 1);
    }

    /// Rewrites the envelope at connect, which is before there is one.
    #[derive(Default)]
    struct Early;

    impl Policy for Early {
        fn on_connect(&mut self, _: &Context) -> Decision {
            Decision::next().add_recipient("audit@example.edu")
        }
        fn on_mail_from(
            &mut self,
            _: &Context,
            _: &str,
            _: &[(String, Option<String>)],
        ) -> Decision {
            Decision::next().replace_recipient("audit@example.edu")
        }
    }

    #[test]
    fn fails_envelope_rewrites_where_the_relay_has_no_use_for_them() {
        let mut session = Session::<Early>::new();
        let connect = catch_unwind(AssertUnwindSafe(|| session.connect())).unwrap_err();
        assert!(
            connect
                .downcast_ref::<String>()
                .unwrap()
                .ends_with("an envelope rewrite before MAIL, when there is no envelope yet")
        );
        let mut session = Session::<Early>::new();
        let mail =
            catch_unwind(AssertUnwindSafe(|| session.mail_from("a@example.edu"))).unwrap_err();
        assert!(
            mail.downcast_ref::<String>()
                .unwrap()
                .ends_with("replace-recipient means something only at the rcpt hook")
        );
    }

    /// Counts every connection under the key its configuration names, over a minute.
    #[derive(Default)]
    struct Counts;

    impl Policy for Counts {
        fn on_connect(&mut self, cx: &Context) -> Decision {
            let key = cx.config_str("key").unwrap_or_default();
            let n = cx.incr(&key, 60);
            Decision::next().add_header("X-Count", &n.to_string())
        }
    }

    fn count(session: &mut Session<Counts>) -> String {
        let decision = session.connect();
        match &decision.rewrites[..] {
            [Rewrite::AddHeader(h)] => h.value.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counters_estimate_as_the_relay_does() {
        let mut session = Session::<Counts>::new().config("key", "k");
        // The session's clock starts at a minute's start; go to its last second.
        session.advance(59_000);
        for i in 1..=10 {
            assert_eq!(count(&mut session), i.to_string());
        }
        // A quarter into the next minute, three quarters of the last one still count, as
        // the relay estimates (an exact count would still be 10, plus this one).
        session.advance(16_000);
        assert_eq!(count(&mut session), "9");
        // Two minutes on, nothing is left.
        session.advance(120_000);
        assert_eq!(count(&mut session), "1");
    }

    #[test]
    fn counters_cut_long_keys_as_the_relay_does() {
        let long = "k".repeat(300);
        let mut first = Session::<Counts>::new().config("key", long.as_str());
        assert_eq!(count(&mut first), "1");
        let other = format!("{}other", &long[..256]);
        first
            .env()
            .config
            .insert("key".into(), ConfigValue::Text(other));
        assert_eq!(count(&mut first), "2");
    }

    /// Reads `start-hour` (an integer from 0 to 23) and `domains`, and nothing else; says
    /// in a header whether it runs in dry-run.
    #[derive(Default)]
    struct Hours;

    impl Policy for Hours {
        fn validate_config(cx: &Context) -> Result<(), String> {
            cx.expect_keys(&["start-hour", "domains"])?;
            let _: Option<Vec<String>> = cx.config_as("domains")?;
            match cx.config_as::<i64>("start-hour")? {
                Some(hour) if !(0..24).contains(&hour) => Err(format!(
                    "`start-hour`: expected an hour from 0 to 23, found {hour}"
                )),
                _ => Ok(()),
            }
        }

        fn on_connect(&mut self, cx: &Context) -> Decision {
            Decision::next().add_header("X-Dry-Run", &cx.dry_run().to_string())
        }
    }

    #[test]
    fn a_module_checks_its_configuration_with_messages_naming_the_key() {
        let check = |mut s: Session<Hours>| s.validate_config();
        assert_eq!(check(Session::new()), Ok(()));
        assert_eq!(
            check(
                Session::new()
                    .config("start-hour", 8)
                    .config("domains", "a.example")
            ),
            Ok(())
        );
        assert_eq!(
            check(Session::new().config("start-hour", "eight")),
            Err("`start-hour`: expected an integer, found text \"eight\"".into())
        );
        assert_eq!(
            check(Session::new().config("start-hour", 25)),
            Err("`start-hour`: expected an hour from 0 to 23, found 25".into())
        );
        assert_eq!(
            check(Session::new().config("domians", ["a.example"])),
            Err("unknown key `domians`; this module reads `start-hour`, `domains`".into())
        );
        assert_eq!(
            check(Session::new().config("domains", true)),
            Err("`domains`: expected a list of text, found true".into())
        );
    }

    #[test]
    fn a_module_can_tell_it_runs_in_dry_run() {
        let header = |mut s: Session<Hours>| match &s.connect().rewrites[..] {
            [Rewrite::AddHeader(h)] => h.value.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(header(Session::new()), "false");
        assert_eq!(header(Session::new().dry_run()), "true");
    }

    /// Would refuse every client, but declares that it acts at rcpt only.
    #[derive(Default)]
    struct RcptOnly;

    impl Policy for RcptOnly {
        const HOOKS: &'static [&'static str] = &["rcpt"];

        fn on_connect(&mut self, _: &Context) -> Decision {
            Decision::reject(554, "5.7.1", "not called")
        }

        fn on_rcpt(&mut self, _: &Context, _: &str, _: &[(String, Option<String>)]) -> Decision {
            Decision::accept()
        }
    }

    #[test]
    fn a_policy_is_not_called_at_hooks_it_does_not_declare() {
        let mut s = Session::<RcptOnly>::new();
        assert_eq!(s.connect().verdict, Verdict::Continue);
        s.helo("app.example.edu");
        s.mail_from("app@example.edu");
        assert_eq!(s.rcpt("a@example.org").verdict, Verdict::Accept);
    }
}
