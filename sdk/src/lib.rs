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
//! The relay makes one instance of the struct per SMTP session (with `Default`), so
//! fields may carry state from one hook to the next within a session.

// Lets the generated bindings name this crate by its public path, as users' crates do.
extern crate self as sluice_sdk;

mod address;
mod networks;

pub use address::Address;
pub use networks::{Networks, NetworksError};

/// The bindings wit-bindgen generates for the contract (`wit/policy.wit`). Not for direct use.
#[doc(hidden)]
pub mod __bindings {
    pub use wit_bindgen;

    wit_bindgen::generate!({
        path: "../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "::sluice_sdk::__bindings",
        runtime_path: "::sluice_sdk::__bindings::wit_bindgen::rt",
    });
}

use __bindings::sluice::policy::{config, log, message, session, types};
pub use types::ConnectionInfo;
pub use types::{Header, Reply, Rewrite, TlsInfo, Verdict};

/// What a module decides at one hook: a verdict, optionally the reply to send, and rewrites.
#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    pub reply: Option<Reply>,
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

    /// Replaces the envelope sender.
    pub fn set_sender(self, sender: &str) -> Self {
        self.with(Rewrite::SetSender(sender.into()))
    }

    fn into_raw(self) -> types::Decision {
        types::Decision {
            verdict: self.verdict,
            reply: self.reply,
            rewrites: self.rewrites,
        }
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
/// configuration (`[policy.config]` in `policies.toml`), and logging.
pub struct Context {
    _private: (),
}

impl Context {
    /// The client's IP address.
    pub fn peer_ip(&self) -> std::net::IpAddr {
        session::connection()
            .peer_ip
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// The TCP connection: addresses, ports and the listener's name.
    pub fn connection(&self) -> ConnectionInfo {
        session::connection()
    }

    /// The HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<String> {
        session::helo()
    }

    /// The TLS session, once negotiated.
    pub fn tls(&self) -> Option<TlsInfo> {
        session::tls()
    }

    /// The authenticated user, if the client authenticated.
    pub fn authenticated_user(&self) -> Option<String> {
        session::authenticated_user()
    }

    /// The envelope sender of the current transaction ("" is the null sender).
    pub fn sender(&self) -> Option<String> {
        session::sender()
    }

    /// The recipients accepted so far in the current transaction.
    pub fn recipients(&self) -> Vec<String> {
        session::recipients()
    }

    /// A text setting.
    pub fn config_str(&self, key: &str) -> Option<String> {
        match config::get(key)? {
            config::Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A list setting; a single text value counts as a list of one. `None` when unset.
    pub fn config_list(&self, key: &str) -> Option<Vec<String>> {
        match config::get(key)? {
            config::Value::TextList(l) => Some(l),
            config::Value::Text(s) => Some(vec![s]),
            _ => None,
        }
    }

    /// A boolean setting.
    pub fn config_bool(&self, key: &str) -> Option<bool> {
        match config::get(key)? {
            config::Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// An integer setting.
    pub fn config_int(&self, key: &str) -> Option<i64> {
        match config::get(key)? {
            config::Value::Integer(i) => Some(i),
            _ => None,
        }
    }

    /// Logs at debug level, tagged with the module and the client.
    pub fn log_debug(&self, message: &str) {
        log::log(log::Level::Debug, message);
    }

    /// Logs at info level.
    pub fn log_info(&self, message: &str) {
        log::log(log::Level::Info, message);
    }

    /// Logs at warn level.
    pub fn log_warn(&self, message: &str) {
        log::log(log::Level::Warn, message);
    }

    /// Logs at error level.
    pub fn log_error(&self, message: &str) {
        log::log(log::Level::Error, message);
    }
}

/// The message at the data hook, read on demand.
pub struct Body<'a> {
    raw: &'a message::Body,
}

impl Body<'_> {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.raw.size()
    }

    /// Up to `len` bytes from `offset`.
    pub fn read(&self, offset: u64, len: u32) -> Vec<u8> {
        self.raw.read(offset, len)
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
}

/// A policy module: implement the hooks you need; the rest answer "no opinion".
pub trait Policy: Default + 'static {
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
        f(policy, &Context { _private: () }).into_raw()
    })
}

/// Wraps the raw body handle for [`Policy::on_data`].
#[doc(hidden)]
pub fn __body(raw: &message::Body) -> Body<'_> {
    Body { raw }
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
        $crate::__bindings::__export_policy_world!(__SluiceExport with_types_in $crate::__bindings);

        /// The policy as the relay would make it for a session (for native unit tests).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __sluice_policy() -> impl $crate::Policy {
            <$policy as ::std::default::Default>::default()
        }
    };
}
