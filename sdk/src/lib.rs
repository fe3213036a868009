//! Write Sluice policy modules in Rust.
//!
//! A policy is a struct that implements [`Policy`] — only the hooks it cares about; the
//! others say "no opinion" — exported with [`export_policy!`] and built for
//! `wasm32-wasip2`:
//!
//! ```ignore
//! use sluice_sdk::{Context, Decision, Policy, export_policy};
//!
//! #[derive(Default)]
//! struct NoPrinters;
//!
//! impl Policy for NoPrinters {
//!     fn on_helo(&mut self, _cx: &Context, name: &str) -> Decision {
//!         if name.starts_with("printer") {
//!             return Decision::reject(550, "5.7.1", "Printers use the print relay");
//!         }
//!         Decision::next()
//!     }
//! }
//!
//! export_policy!(NoPrinters);
//! ```
//!
//! The relay makes one value of the struct per SMTP session (with `Default`), so fields
//! may carry state from one hook to the next within a session. Keep that state in the
//! struct: the relay starts a later session on the same WebAssembly instance (much cheaper
//! than a new one), so a `static` lives on from one session to the next.
//!
//! What a policy works with:
//! - [`Decision`] — what a hook answers: a [`Verdict`], perhaps a [`Reply`] for the client,
//!   and [`Rewrite`]s of the envelope or the header fields.
//! - [`Context`] — what the relay lends a hook: facts about the session, the module's
//!   configuration, the clock, counters for rate limits, the relay registry, logging.
//! - [`Body`] — the message at the data hook, read on demand, and its [`Parsed`] view.
//! - [`Address`], [`ascii_domain`] and [`Networks`] — addresses, domains and lists of
//!   networks, read the way the relay reads them.
//! - [`testing`] — unit tests in plain `cargo test`: a simulated session that calls the
//!   hooks in SMTP order and fails the test on a decision the relay would not take.

#![deny(missing_docs)]

// Lets the generated bindings name this crate by its public path, as users' crates do.
extern crate self as sluice_sdk;

mod imports;
mod networks;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use imports::{ConfigValue, Level, Registration, Standing};
pub use networks::{Networks, NetworksError};
// The relay's own code for addresses, domains and a parsed message: a policy compares and
// reads them exactly as the relay does.
pub use sluice_mail::{Address, Parsed, Part, ascii_domain};

/// The bindings wit-bindgen generates for the contract (`wit/policy.wit`). Not for direct use.
#[doc(hidden)]
pub mod __bindings {
    pub use wit_bindgen;

    wit_bindgen::generate!({
        path: "../wit",
        // With `lifecycle`: the relay may start one session after another on an instance;
        // with `validation`: it checks the module's configuration when it loads it.
        world: "reusable-policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "::sluice_sdk::__bindings",
        runtime_path: "::sluice_sdk::__bindings::wit_bindgen::rt",
        additional_derives: [PartialEq],
        // The parsed view is the mail crate's plain type, filled in straight from the
        // relay's answer: natively the test session builds the same type with the same
        // parser, so there is no second definition to convert between. (The keys name the
        // contract's version: wit-bindgen refuses one that matches nothing.)
        with: {
            "sluice:policy/message@0.1.1/parsed": ::sluice_sdk::Parsed,
            "sluice:policy/message@0.1.1/part": ::sluice_sdk::Part,
        },
    });
}

use __bindings::sluice::policy::{message, types};
pub use types::ConnectionInfo;
pub use types::{Header, Reply, Rewrite, TlsInfo, Verdict};

/// What a module decides at one hook: a verdict, optionally the reply to send, and rewrites.
///
/// Build one with the constructors — [`Decision::next`], [`accept`](Decision::accept),
/// [`reject`](Decision::reject), [`tempfail`](Decision::tempfail),
/// [`discard`](Decision::discard), [`quarantine`](Decision::quarantine) — and add rewrites
/// with [`add_header`](Decision::add_header), [`set_sender`](Decision::set_sender) and the
/// like.
///
/// The relay checks every decision it gets. A reply whose code does not fit the verdict
/// (a reject with 450, a tempfail with 550) or whose enhanced status code is malformed
/// counts as a failure of the module, and the policy's `on_error` applies; reply text with
/// line breaks or over 400 bytes is sent cleaned and cut; a rewrite to an invalid address
/// or header field is ignored. [`testing::Session`] applies the same checks, and fails the
/// unit test instead.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What the module says: no opinion, accept, reject, tempfail, discard or quarantine.
    pub verdict: Verdict,
    /// The reply the client gets when this decision ends the hook; `None` leaves it to the
    /// relay (for a reject or tempfail, a generic refusal).
    pub reply: Option<Reply>,
    /// Changes to the envelope and the header fields, applied in order.
    pub rewrites: Vec<Rewrite>,
}

impl Decision {
    fn new(verdict: Verdict, reply: Option<Reply>) -> Self {
        Self {
            verdict,
            reply,
            rewrites: Vec::new(),
        }
    }

    /// No opinion: the next module decides.
    pub fn next() -> Self {
        Self::new(Verdict::Continue, None)
    }

    /// Accept: no later module is asked at this hook. At rcpt, this is what lets a
    /// recipient through: with no module accepting, the relay refuses it.
    pub fn accept() -> Self {
        Self::new(Verdict::Accept, None)
    }

    /// Refuse permanently with a 5xx reply, such as `reject(550, "5.7.1", "Not allowed")`.
    pub fn reject(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self::new(Verdict::Reject, Some(reply(code, enhanced, text)))
    }

    /// Refuse temporarily with a 4xx reply: the client tries again later.
    pub fn tempfail(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self::new(Verdict::Tempfail, Some(reply(code, enhanced, text)))
    }

    /// Accept the message and drop it (data hook only).
    pub fn discard() -> Self {
        Self::new(Verdict::Discard, None)
    }

    /// Accept the message and hold it in the queue for a postmaster (data hook only).
    pub fn quarantine() -> Self {
        Self::new(Verdict::Quarantine, None)
    }

    /// Adds a rewrite.
    pub fn with(mut self, rewrite: Rewrite) -> Self {
        self.rewrites.push(rewrite);
        self
    }

    /// Adds a header field at the top of the message.
    pub fn add_header(self, name: &str, value: &str) -> Self {
        self.with(Rewrite::AddHeader(Header {
            name: name.into(),
            value: value.into(),
        }))
    }

    /// Replaces every header field of this name with one field of this value.
    pub fn replace_header(self, name: &str, value: &str) -> Self {
        self.with(Rewrite::ReplaceHeader(Header {
            name: name.into(),
            value: value.into(),
        }))
    }

    /// Removes every header field of this name.
    pub fn remove_header(self, name: &str) -> Self {
        self.with(Rewrite::RemoveHeader(name.into()))
    }

    /// Replaces the envelope sender ("" is the null sender).
    pub fn set_sender(self, sender: &str) -> Self {
        self.with(Rewrite::SetSender(sender.into()))
    }

    /// Replaces the recipient being decided on (rcpt hook).
    pub fn replace_recipient(self, recipient: &str) -> Self {
        self.with(Rewrite::ReplaceRecipient(recipient.into()))
    }

    /// Adds a recipient to the transaction.
    pub fn add_recipient(self, recipient: &str) -> Self {
        self.with(Rewrite::AddRecipient(recipient.into()))
    }

    /// The reply code, when the decision carries a reply.
    pub fn code(&self) -> Option<u16> {
        self.reply.as_ref().map(|r| r.code)
    }

    fn into_raw(self) -> types::Decision {
        types::Decision {
            verdict: self.verdict,
            reply: self.reply,
            rewrites: self.rewrites,
        }
    }
}

/// A type a setting can be read as with [`Context::config_as`].
pub trait FromConfig: Sized {
    /// What the setting should be, for the error: "an integer".
    const EXPECTED: &'static str;
    /// The value as `Self`, if it is one.
    fn from_config(value: ConfigValue) -> Option<Self>;
}

/// `FromConfig` for a type that is one variant of [`ConfigValue`].
macro_rules! from_config_variant {
    ($type:ty, $variant:ident, $expected:literal) => {
        impl FromConfig for $type {
            const EXPECTED: &'static str = $expected;
            fn from_config(value: ConfigValue) -> Option<Self> {
                match value {
                    ConfigValue::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

from_config_variant!(String, Text, "text");
from_config_variant!(i64, Integer, "an integer");
from_config_variant!(bool, Boolean, "true or false");

impl FromConfig for Vec<String> {
    const EXPECTED: &'static str = "a list of text";
    fn from_config(value: ConfigValue) -> Option<Self> {
        match value {
            ConfigValue::TextList(l) => Some(l),
            // As `config_list` reads it: one text value is a list of one.
            ConfigValue::Text(s) => Some(vec![s]),
            _ => None,
        }
    }
}

/// A setting as an error message shows it: `text "eight"`, `the integer 8`.
fn describe(value: &ConfigValue) -> String {
    match value {
        ConfigValue::Text(s) => format!("text {s:?}"),
        ConfigValue::Integer(i) => format!("the integer {i}"),
        ConfigValue::Boolean(b) => format!("{b}"),
        ConfigValue::TextList(l) => format!("a list {l:?}"),
    }
}

fn reply(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
    Reply {
        code,
        enhanced: enhanced.into(),
        text: text.into(),
    }
}

/// What the relay lends a module during a hook: facts about the session, the module's
/// configuration (`[policy.config]` in `policies.toml`), the clock, counters and logging.
pub struct Context {
    _private: (),
}

impl Context {
    pub(crate) fn new() -> Self {
        Context { _private: () }
    }

    /// The client's IP address.
    pub fn peer_ip(&self) -> std::net::IpAddr {
        imports::connection()
            .peer_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// The TCP connection: addresses, ports and the listener's name.
    pub fn connection(&self) -> ConnectionInfo {
        imports::connection()
    }

    /// The HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<String> {
        imports::helo()
    }

    /// The TLS session, once negotiated.
    pub fn tls(&self) -> Option<TlsInfo> {
        imports::tls()
    }

    /// The authenticated user, if the client authenticated.
    pub fn authenticated_user(&self) -> Option<String> {
        imports::authenticated_user()
    }

    /// The envelope sender of the current transaction ("" is the null sender).
    pub fn sender(&self) -> Option<String> {
        imports::sender()
    }

    /// The recipients accepted so far in the current transaction.
    pub fn recipients(&self) -> Vec<String> {
        imports::recipients()
    }

    /// A setting as it is, whatever its type.
    pub fn config(&self, key: &str) -> Option<ConfigValue> {
        imports::config(key)
    }

    /// Every key of the module's configuration.
    pub fn config_keys(&self) -> Vec<String> {
        imports::config_keys()
    }

    /// A text setting.
    pub fn config_str(&self, key: &str) -> Option<String> {
        match self.config(key)? {
            ConfigValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A list setting; a single text value counts as a list of one. `None` when unset.
    pub fn config_list(&self, key: &str) -> Option<Vec<String>> {
        match self.config(key)? {
            ConfigValue::TextList(l) => Some(l),
            ConfigValue::Text(s) => Some(vec![s]),
            _ => None,
        }
    }

    /// A boolean setting.
    pub fn config_bool(&self, key: &str) -> Option<bool> {
        match self.config(key)? {
            ConfigValue::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// An integer setting.
    pub fn config_int(&self, key: &str) -> Option<i64> {
        match self.config(key)? {
            ConfigValue::Integer(i) => Some(i),
            _ => None,
        }
    }

    /// A setting of the type `T` (`String`, `i64`, `bool` or `Vec<String>`): `Ok(None)`
    /// when unset, and an error naming the key when it holds another type, for
    /// [`Policy::validate_config`]: `let hour: Option<i64> = cx.config_as("start-hour")?;`
    pub fn config_as<T: FromConfig>(&self, key: &str) -> Result<Option<T>, String> {
        match self.config(key) {
            None => Ok(None),
            Some(value) => T::from_config(value.clone()).map(Some).ok_or_else(|| {
                format!(
                    "`{key}`: expected {}, found {}",
                    T::EXPECTED,
                    describe(&value)
                )
            }),
        }
    }

    /// Fails, naming the key, when the configuration has a key not in `known`: a
    /// misspelled key is otherwise silently unread. For [`Policy::validate_config`].
    pub fn expect_keys(&self, known: &[&str]) -> Result<(), String> {
        match self
            .config_keys()
            .into_iter()
            .find(|k| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some(unknown) => Err(format!(
                "unknown key `{unknown}`; this module reads {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
        }
    }

    /// Whether the module runs in dry-run (`mode = "dry-run"` in `policies.toml`): its
    /// decisions are logged, not applied. Its log lines are tagged with the mode anyway.
    pub fn dry_run(&self) -> bool {
        imports::dry_run()
    }

    /// Milliseconds since the Unix epoch, by the relay's clock.
    pub fn now_ms(&self) -> u64 {
        imports::now_ms()
    }

    /// Counts one event for `key` (this module's own counter, shared by every session of
    /// the relay node) and returns the count over the last `window_secs`, this one included.
    pub fn incr(&self, key: &str, window_secs: u32) -> u64 {
        imports::count(key, window_secs, true)
    }

    /// The count of `key` over the last `window_secs`, without counting.
    pub fn peek(&self, key: &str, window_secs: u32) -> u64 {
        imports::count(key, window_secs, false)
    }

    /// Asks that `recipient` be delivered only over TLS (never in clear), whatever its
    /// domain's own rule in the relay's configuration.
    pub fn require_tls(&self, recipient: &str) {
        imports::require_tls(recipient)
    }

    /// What the relay registry says of `ip`: the registration covering it (network and
    /// department) and, if the postmaster blocked it, why.
    pub fn registry(&self, ip: std::net::IpAddr) -> Standing {
        imports::registry(&ip.to_canonical().to_string())
    }

    /// Logs at debug level, tagged with the module, the client and the queue id.
    pub fn log_debug(&self, message: &str) {
        imports::log(Level::Debug, message, &[]);
    }

    /// Logs at info level.
    pub fn log_info(&self, message: &str) {
        imports::log(Level::Info, message, &[]);
    }

    /// Logs at warn level.
    pub fn log_warn(&self, message: &str) {
        imports::log(Level::Warn, message, &[]);
    }

    /// Logs at error level.
    pub fn log_error(&self, message: &str) {
        imports::log(Level::Error, message, &[]);
    }

    /// Logs a line with named fields (`key=value` in the relay's log), for lines a
    /// postmaster alerts on: `cx.event(Level::Warn, "over the limit", &[("ip", ip)])`.
    pub fn event(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        imports::log(level, message, &fields);
    }
}

/// The value of the first header field named `name` (case-insensitive).
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The values of every header field named `name` (case-insensitive), in order.
pub fn headers_named<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The message at the data hook, read on demand.
pub struct Body<'a> {
    source: BodySource<'a>,
}

enum BodySource<'a> {
    /// The relay's handle.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    Relay(&'a message::Body),
    /// A message given to a test session, parsed when asked.
    #[cfg(not(target_arch = "wasm32"))]
    Test(&'a [u8], Box<std::cell::OnceCell<(Parsed, String)>>),
}

impl<'a> Body<'a> {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn for_test(raw: &'a [u8]) -> Self {
        Body {
            source: BodySource::Test(raw, Box::default()),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match &self.source {
            BodySource::Relay(raw) => raw.size(),
            #[cfg(not(target_arch = "wasm32"))]
            BodySource::Test(raw, _) => raw.len() as u64,
        }
    }

    /// Up to `len` bytes from `offset`.
    pub fn read(&self, offset: u64, len: u32) -> Vec<u8> {
        match &self.source {
            BodySource::Relay(raw) => raw.read(offset, len),
            #[cfg(not(target_arch = "wasm32"))]
            BodySource::Test(raw, _) => {
                let start = (offset as usize).min(raw.len());
                let end = start.saturating_add(len as usize).min(raw.len());
                raw[start..end].to_vec()
            }
        }
    }

    /// The whole message (for small messages; prefer `read` for large ones).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size() as usize);
        loop {
            let chunk = self.read(out.len() as u64, 64 * 1024);
            if chunk.is_empty() {
                return out;
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// The parsed view: subject, addresses, MIME parts (parsed once by the relay).
    pub fn parsed(&self) -> Parsed {
        match &self.source {
            BodySource::Relay(raw) => raw.parsed(),
            #[cfg(not(target_arch = "wasm32"))]
            BodySource::Test(raw, view) => {
                view.get_or_init(|| sluice_mail::mime::parse(raw)).0.clone()
            }
        }
    }

    /// The message's text (first text/plain part, or the HTML part as text), decoded,
    /// cut to at most `max_bytes`.
    pub fn text(&self, max_bytes: u32) -> String {
        match &self.source {
            BodySource::Relay(raw) => raw.text(max_bytes),
            #[cfg(not(target_arch = "wasm32"))]
            BodySource::Test(raw, view) => {
                let text = &view.get_or_init(|| sluice_mail::mime::parse(raw)).1;
                sluice_mail::mime::cut_text(text, max_bytes as usize).to_string()
            }
        }
    }
}

/// A policy module: implement the hooks you need; the rest answer "no opinion".
///
/// A value is made with `Default` at a session's first hook and serves that session's
/// hooks; at the next session on the same instance (the relay reuses instances) it is
/// dropped and a new one made.
pub trait Policy: Default + 'static {
    /// The hooks this policy acts at, as `policies.toml` names them: the relay calls it at
    /// these only (unless `policies.toml` names others), sparing calls whose answer is
    /// "no opinion". By default every hook; a policy that decides at one hook says so:
    /// `const HOOKS: &'static [&'static str] = &["rcpt"];` The test [`testing::Session`]
    /// does not call the others either.
    const HOOKS: &'static [&'static str] = &["connect", "helo", "mail-from", "rcpt", "data"];

    /// Checks the module's configuration when the relay loads it (at start, at every
    /// reload, and in `sluice policy check`): an error refuses the module, and the
    /// postmaster sees it as it is, so name the key and what it should be.
    /// [`Context::config_as`] and [`Context::expect_keys`] give such messages. Only the
    /// configuration answers here: there is no client yet.
    fn validate_config(cx: &Context) -> Result<(), String> {
        let _ = cx;
        Ok(())
    }

    /// A client connected (before the greeting).
    fn on_connect(&mut self, cx: &Context) -> Decision {
        let _ = cx;
        Decision::next()
    }

    /// HELO or EHLO with this name.
    fn on_helo(&mut self, cx: &Context, name: &str) -> Decision {
        let _ = (cx, name);
        Decision::next()
    }

    /// MAIL FROM with this address ("" is the null sender) and its ESMTP parameters.
    fn on_mail_from(
        &mut self,
        cx: &Context,
        sender: &str,
        params: &[(String, Option<String>)],
    ) -> Decision {
        let _ = (cx, sender, params);
        Decision::next()
    }

    /// RCPT TO with this address and its ESMTP parameters.
    fn on_rcpt(
        &mut self,
        cx: &Context,
        recipient: &str,
        params: &[(String, Option<String>)],
    ) -> Decision {
        let _ = (cx, recipient, params);
        Decision::next()
    }

    /// The message: its header fields in order, and its text.
    fn on_data(&mut self, cx: &Context, headers: &[Header], body: &Body<'_>) -> Decision {
        let _ = (cx, headers, body);
        Decision::next()
    }
}

/// Runs `f` on the session's instance of `P`, made with `Default` at the first hook.
#[doc(hidden)]
pub fn __with_instance<P: Policy>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>,
    f: impl FnOnce(&mut P, &Context) -> Decision,
) -> types::Decision {
    cell.with(|slot| {
        let mut slot = slot.borrow_mut();
        let policy = slot.get_or_insert_with(P::default);
        f(policy, &Context::new()).into_raw()
    })
}

/// A new session begins on this instance: the last session's value of `P` goes, and the
/// next hook makes a new one with `Default`.
#[doc(hidden)]
pub fn __reset<P: Policy>(cell: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>) {
    cell.with(|slot| slot.borrow_mut().take());
}

/// Runs `P`'s configuration check.
#[doc(hidden)]
pub fn __validate_config<P: Policy>() -> Result<(), String> {
    P::validate_config(&Context::new())
}

/// Wraps the raw body handle for [`Policy::on_data`].
#[doc(hidden)]
pub fn __body(raw: &message::Body) -> Body<'_> {
    Body {
        source: BodySource::Relay(raw),
    }
}

/// Exports a [`Policy`] as the module's hooks: `export_policy!(MyPolicy);`
///
/// The export exists only when building for WebAssembly, so the same crate also builds
/// natively, where its unit tests run with plain `cargo test`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        ::std::thread_local! {
            static __SLUICE_POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        #[cfg(target_arch = "wasm32")]
        struct __SluiceExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::__bindings::exports::sluice::policy::hooks::Guest for __SluiceExport {
            fn on_connect() -> $crate::__bindings::sluice::policy::types::Decision {
                $crate::__with_instance(&__SLUICE_POLICY, |p, cx| {
                    <$policy as $crate::Policy>::on_connect(p, cx)
                })
            }

            fn on_helo(name: ::std::string::String) -> $crate::__bindings::sluice::policy::types::Decision {
                $crate::__with_instance(&__SLUICE_POLICY, |p, cx| {
                    <$policy as $crate::Policy>::on_helo(p, cx, &name)
                })
            }

            fn on_mail_from(
                sender: ::std::string::String,
                params: ::std::vec::Vec<(::std::string::String, ::std::option::Option<::std::string::String>)>,
            ) -> $crate::__bindings::sluice::policy::types::Decision {
                $crate::__with_instance(&__SLUICE_POLICY, |p, cx| {
                    <$policy as $crate::Policy>::on_mail_from(p, cx, &sender, &params)
                })
            }

            fn on_rcpt(
                recipient: ::std::string::String,
                params: ::std::vec::Vec<(::std::string::String, ::std::option::Option<::std::string::String>)>,
            ) -> $crate::__bindings::sluice::policy::types::Decision {
                $crate::__with_instance(&__SLUICE_POLICY, |p, cx| {
                    <$policy as $crate::Policy>::on_rcpt(p, cx, &recipient, &params)
                })
            }

            fn on_data(
                headers: ::std::vec::Vec<$crate::Header>,
                message: &$crate::__bindings::sluice::policy::message::Body,
            ) -> $crate::__bindings::sluice::policy::types::Decision {
                $crate::__with_instance(&__SLUICE_POLICY, |p, cx| {
                    <$policy as $crate::Policy>::on_data(p, cx, &headers, &$crate::__body(message))
                })
            }
        }

        #[cfg(target_arch = "wasm32")]
        impl $crate::__bindings::exports::sluice::policy::lifecycle::Guest for __SluiceExport {
            fn reset() {
                $crate::__reset(&__SLUICE_POLICY);
            }
        }

        #[cfg(target_arch = "wasm32")]
        impl $crate::__bindings::exports::sluice::policy::validation::Guest for __SluiceExport {
            fn validate_config() -> ::std::result::Result<(), ::std::string::String> {
                $crate::__validate_config::<$policy>()
            }
        }

        #[cfg(target_arch = "wasm32")]
        impl $crate::__bindings::exports::sluice::policy::declared_hooks::Guest for __SluiceExport {
            fn hooks() -> ::std::vec::Vec<::std::string::String> {
                <$policy as $crate::Policy>::HOOKS
                    .iter()
                    .map(|h| ::std::string::ToString::to_string(h))
                    .collect()
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::__export_policy_world!(__SluiceExport with_types_in $crate::__bindings);

        /// Natively nothing is exported; this keeps the policy reachable, so a native build
        /// (for unit tests) has no dead-code warnings.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __sluice_policy() -> impl $crate::Policy {
            <$policy as ::std::default::Default>::default()
        }
    };
}
