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
//! Counters here count exactly over the window; the relay estimates from two fixed
//! windows, which may differ by a little at a window's edge.

use crate::__bindings::sluice::policy::types::{ConnectionInfo, TlsInfo};
use crate::imports::{ConfigValue, Level, Registration, Standing};
use crate::{Body, Context, Decision, Header, Policy, Verdict};
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
    pub now_ms: u64,
    /// Recipients the module asked to be delivered over TLS only.
    pub tls_required: Vec<String>,
    /// The registry: `(network, department)` registered, `(network, reason)` blocked.
    registered: Vec<(String, String)>,
    blocked: Vec<(String, String)>,
    counted: HashMap<(String, u32), Vec<u64>>,
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

    pub fn count(&mut self, key: &str, window_secs: u32, add: bool) -> u64 {
        let now = self.now_ms;
        let since = now.saturating_sub(u64::from(window_secs) * 1000);
        let times = self
            .counted
            .entry((key.to_string(), window_secs))
            .or_default();
        times.retain(|&t| t > since);
        if add {
            times.push(now);
        }
        times.len() as u64
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

/// A value for [`Session::config`].
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
                now_ms: 1_800_000_000_000,
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

    /// A key of the module's `[policy.config]`.
    pub fn config(mut self, key: &str, value: impl Into<Setting>) -> Self {
        self.env().config.insert(key.into(), value.into().0);
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

    /// Runs one hook with the environment in place.
    fn call(&mut self, hook: impl FnOnce(&mut P, &Context) -> Decision) -> Decision {
        CURRENT.with(|c| *c.borrow_mut() = self.env.take());
        let decision = hook(&mut self.policy, &Context::new());
        self.env = CURRENT.with(|c| c.borrow_mut().take());
        decision
    }

    /// The client connects.
    pub fn connect(&mut self) -> Decision {
        self.call(|p, cx| p.on_connect(cx))
    }

    /// HELO/EHLO with `name`.
    pub fn helo(&mut self, name: &str) -> Decision {
        self.env().helo = Some(name.into());
        self.call(|p, cx| p.on_helo(cx, name))
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
        let decision = self.call(|p, cx| p.on_mail_from(cx, sender, &params));
        if refused(&decision) {
            self.env().sender = None;
        }
        decision
    }

    /// RCPT TO; the recipient is added unless the module refuses it. (In the relay a
    /// recipient also needs some module to accept it; here the module is tested alone, and
    /// "no opinion" stands for the rest of the chain accepting.)
    pub fn rcpt(&mut self, recipient: &str) -> Decision {
        let decision = self.call(|p, cx| p.on_rcpt(cx, recipient, &[]));
        if !refused(&decision) {
            self.env().recipients.push(recipient.into());
        }
        decision
    }

    /// The message (header fields, blank line, body; CRLF line ends).
    pub fn data(&mut self, message: &[u8]) -> Decision {
        let headers: Vec<Header> = crate::mime::header_fields(message)
            .into_iter()
            .map(|f| Header {
                name: f.name,
                value: f.value,
            })
            .collect();
        let body = Body::for_test(message);
        self.call(|p, cx| p.on_data(cx, &headers, &body))
    }
}

fn refused(d: &Decision) -> bool {
    matches!(d.verdict, Verdict::Reject | Verdict::Tempfail)
}
