//! What the host lends a policy module: the imports of the contract.
//!
//! Each module instance has its own `Store<HostState>`: its own configuration, memory
//! limit and resource table, and a shared, read-only snapshot of the session's facts.
//! WASI is linked with an empty context: no files, no sockets, no environment; stdout and
//! stderr are captured for the log (see `output.rs`).

use super::counters::{self, Counters};
use super::engine::sluice::policy::{clock, config, log, message, session, types};
use super::message::MessageBody;
use super::output::clean_line;
use crate::registry::Table;
use crate::registry::table::display;
use arc_swap::ArcSwap;
use sluice_mail::mime::cut_text;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use wasmtime::StoreLimits;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What is known about an SMTP session, as the contract's `session` interface shows it.
/// The session replaces its snapshot whenever a fact changes; modules read the latest.
#[derive(Debug, Clone)]
pub struct SessionFacts {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: String,
    pub helo: Option<String>,
    /// TLS protocol version and cipher suite, once negotiated.
    pub tls: Option<(String, String)>,
    pub authenticated_user: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    /// The queue id of the transaction in progress (for the log; modules do not see it).
    pub queue_id: Option<String>,
    /// The session's number in the log (modules do not see it).
    pub session: u64,
    /// The time modules are told, when not the relay's clock: `sluice policy test` sets a
    /// scenario's `at`.
    pub clock: Option<SetClock>,
}

/// A clock set to a given time, running from when it was set.
#[derive(Debug, Clone, Copy)]
pub struct SetClock {
    at_ms: u64,
    set: std::time::Instant,
}

impl SetClock {
    /// A clock that reads `at_ms` (Unix milliseconds) now.
    pub fn at(at_ms: u64) -> SetClock {
        SetClock {
            at_ms,
            set: std::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.at_ms + self.set.elapsed().as_millis() as u64
    }
}

/// Modules' WASI wall clock (`time.time()` in Python, `Date.now()` in JavaScript) reads
/// the set clock too.
impl wasmtime_wasi::HostWallClock for SetClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.now_ms())
    }
}

impl SessionFacts {
    /// What is known when a client connects: who it is and where it came in.
    pub fn new(peer: SocketAddr, local: SocketAddr, listener: &str) -> Self {
        SessionFacts {
            peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            local,
            listener: listener.to_string(),
            helo: None,
            tls: None,
            authenticated_user: None,
            sender: None,
            recipients: Vec::new(),
            queue_id: None,
            session: 0,
            clock: None,
        }
    }

    /// Unix milliseconds, as modules are told.
    pub fn now_ms(&self) -> u64 {
        self.clock.map_or_else(counters::now_ms, |c| c.now_ms())
    }
}

/// A value from a module's `[policy.config]` table.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
    TextList(Vec<String>),
}

/// Largest single read a module may ask for, so one call cannot make the host copy a
/// whole large message into the module's memory at once.
const MAX_READ: u32 = 1 << 20;
/// Fields of one log event kept at most.
const MAX_LOG_FIELDS: usize = 32;

/// The store's limits, remembering when it refused a module memory: a module that runs out
/// of memory traps like any other, and the metrics tell the two apart.
pub struct MemoryLimit {
    pub limits: StoreLimits,
    /// A memory (or table) was refused the growth it asked for.
    pub refused: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        self.refused |= !matches!(allowed, Ok(true));
        allowed
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.table_growing(current, desired, maximum);
        self.refused |= !matches!(allowed, Ok(true));
        allowed
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The data of one module instance's store.
pub struct HostState {
    pub module: Arc<str>,
    pub config: Arc<BTreeMap<String, ConfigValue>>,
    pub facts: Arc<SessionFacts>,
    pub limits: MemoryLimit,
    /// The node's counters (`counters` in the contract).
    pub counters: Arc<Counters>,
    /// What the session's modules asked of delivery (`delivery` in the contract).
    pub requests: Arc<DeliveryRequests>,
    /// The relay registry (`registry` in the contract).
    pub registry: Arc<ArcSwap<Table>>,
    /// A dry-run module's requests are logged, not applied.
    pub dry_run: bool,
    pub table: ResourceTable,
    pub wasi: WasiCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl session::Host for HostState {
    fn connection(&mut self) -> types::ConnectionInfo {
        let f = &self.facts;
        types::ConnectionInfo {
            peer_ip: f.peer.ip().to_canonical().to_string(),
            peer_port: f.peer.port(),
            local_ip: f.local.ip().to_canonical().to_string(),
            local_port: f.local.port(),
            listener: f.listener.clone(),
        }
    }

    fn helo(&mut self) -> Option<String> {
        self.facts.helo.clone()
    }

    fn tls(&mut self) -> Option<types::TlsInfo> {
        self.facts
            .tls
            .as_ref()
            .map(|(version, cipher)| types::TlsInfo {
                version: version.clone(),
                cipher: cipher.clone(),
            })
    }

    fn authenticated_user(&mut self) -> Option<String> {
        self.facts.authenticated_user.clone()
    }

    fn sender(&mut self) -> Option<String> {
        self.facts.sender.clone()
    }

    fn recipients(&mut self) -> Vec<String> {
        self.facts.recipients.clone()
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<config::Value> {
        self.config.get(&key).map(|v| match v.clone() {
            ConfigValue::Text(s) => config::Value::Text(s),
            ConfigValue::Integer(i) => config::Value::Integer(i),
            ConfigValue::Boolean(b) => config::Value::Boolean(b),
            ConfigValue::TextList(l) => config::Value::TextList(l),
        })
    }

    fn keys(&mut self) -> Vec<String> {
        self.config.keys().cloned().collect()
    }

    fn dry_run(&mut self) -> bool {
        self.dry_run
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        self.emit(level, message, Vec::new());
    }

    fn event(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        self.emit(level, message, fields);
    }
}

impl HostState {
    /// Writes a module's log line, tagged with the module, the client and the queue id;
    /// the module's text is cleaned ([`clean_line`]), so a module cannot forge or flood
    /// log lines.
    fn emit(&self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let mut line = String::new();
        for (key, value) in fields.iter().take(MAX_LOG_FIELDS) {
            let _ = write!(line, "{key}={value} ");
        }
        line.push_str(&message);
        let line = clean_line(&line);
        let module = &*self.module;
        let (peer, session) = (self.facts.peer.ip(), self.facts.session);
        let queue_id = self.facts.queue_id.as_deref().unwrap_or("-");
        // A dry-run module's "refused" is not a refusal: its lines say which they are.
        let mode = if self.dry_run { "dry-run" } else { "enforce" };
        match level {
            log::Level::Trace => tracing::trace!(module, mode, session, %peer, queue_id, "{line}"),
            log::Level::Debug => tracing::debug!(module, mode, session, %peer, queue_id, "{line}"),
            log::Level::Info => tracing::info!(module, mode, session, %peer, queue_id, "{line}"),
            log::Level::Warn => tracing::warn!(module, mode, session, %peer, queue_id, "{line}"),
            log::Level::Error => tracing::error!(module, mode, session, %peer, queue_id, "{line}"),
        }
    }
}

/// What a session's modules asked of the delivery of its transaction, shared by the
/// session's module instances; the session takes it when it queues a message.
#[derive(Debug, Default)]
pub struct DeliveryRequests {
    /// Recipients (lower-cased) to be delivered only over TLS.
    require_tls: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl DeliveryRequests {
    /// Does a module want `recipient` delivered over TLS only?
    pub fn requires_tls(&self, recipient: &str) -> bool {
        self.require_tls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&mark(recipient))
    }

    /// Forgets the requests (the transaction ended).
    pub fn clear(&self) {
        self.require_tls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Recipients a transaction may mark at most (a module cannot grow the set without end;
/// far above any recipient limit a relay would set).
const MAX_MARKED: usize = 10_000;

/// An address as marks compare it: the local part, and the domain as routing sees it
/// (no trailing dot, lower case, IDNA), so `Dr@UWHealth.org.` is `dr@uwhealth.org`.
fn mark(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!(
            "{}@{}",
            local.to_lowercase(),
            sluice_mail::address::normalise_domain(domain)
        ),
        None => address.to_lowercase(),
    }
}

impl super::engine::sluice::policy::delivery::Host for HostState {
    fn require_tls(&mut self, recipient: String) {
        let module = &*self.module;
        if !sluice_mail::address::valid_address(&recipient) {
            // Not an address the relay would deliver to: nothing to mark, and its text is
            // not for the log as it stands.
            let recipient = clean_line(&recipient);
            tracing::warn!(module, %recipient, "require-tls for something not an address ignored");
            return;
        }
        if self.facts.queue_id.is_none() {
            // Marks are about a transaction's recipients; before MAIL there is none.
            tracing::warn!(module, %recipient, "require-tls outside a transaction ignored");
            return;
        }
        if self.dry_run {
            tracing::info!(module, %recipient, "dry-run: would have required TLS for the recipient");
            return;
        }
        let mut marked = self
            .requests
            .require_tls
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if marked.len() >= MAX_MARKED {
            tracing::warn!(module, %recipient, "too many recipients marked for TLS; this one is not");
            return;
        }
        tracing::debug!(module, %recipient, "TLS required for the recipient");
        marked.insert(mark(&recipient));
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> u64 {
        self.facts.now_ms()
    }
}

// Async on the host (see the engine's bindings): a counter in Redis is a round trip that
// blocks no worker. When it cannot be counted (Redis down, `on_unavailable = "tempfail"`)
// the call fails, and the chain answers 451 whatever the module's `on_error`.
impl super::engine::sluice::policy::counters::Host for HostState {
    async fn incr(&mut self, key: String, window_seconds: u32) -> wasmtime::Result<u64> {
        self.counters
            .count(&self.module, &key, window_seconds, 1, self.facts.now_ms())
            .await
            .map_err(wasmtime::Error::new)
    }

    async fn peek(&mut self, key: String, window_seconds: u32) -> wasmtime::Result<u64> {
        self.counters
            .count(&self.module, &key, window_seconds, 0, self.facts.now_ms())
            .await
            .map_err(wasmtime::Error::new)
    }
}

impl super::engine::sluice::policy::registry::Host for HostState {
    fn lookup(&mut self, ip: String) -> super::engine::sluice::policy::registry::Standing {
        use super::engine::sluice::policy::registry::{Registration, Standing};
        let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
            return Standing {
                registration: None,
                blocked: None,
            };
        };
        let table = self.registry.load();
        Standing {
            registration: table.registration(ip).map(|r| Registration {
                network: display(&r.network),
                department: r.department.clone(),
            }),
            blocked: table.block(ip).map(|b| b.reason.clone()),
        }
    }
}

impl message::Host for HostState {}

impl message::HostBody for HostState {
    fn size(&mut self, body: Resource<MessageBody>) -> u64 {
        self.table
            .get(&body)
            .map(|b| b.0.raw.len() as u64)
            .unwrap_or(0)
    }

    fn read(&mut self, body: Resource<MessageBody>, offset: u64, len: u32) -> Vec<u8> {
        let Ok(body) = self.table.get(&body) else {
            return Vec::new();
        };
        let raw = &body.0.raw;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(raw.len());
        let end = start
            .saturating_add(len.min(MAX_READ) as usize)
            .min(raw.len());
        raw[start..end].to_vec()
    }

    fn parsed(&mut self, body: Resource<MessageBody>) -> message::Parsed {
        let unreadable = sluice_mail::Parsed::default();
        let p = match self.table.get(&body) {
            Ok(body) => &body.0.parsed().0,
            Err(_) => &unreadable,
        };
        message::Parsed {
            subject: p.subject.clone(),
            from: p.from.clone(),
            sender: p.sender.clone(),
            to: p.to.clone(),
            cc: p.cc.clone(),
            reply_to: p.reply_to.clone(),
            message_id: p.message_id.clone(),
            parts: p
                .parts
                .iter()
                .map(|part| message::Part {
                    content_type: part.content_type.clone(),
                    filename: part.filename.clone(),
                    size: part.size,
                })
                .collect(),
        }
    }

    fn text(&mut self, body: Resource<MessageBody>, max_bytes: u32) -> String {
        let Ok(body) = self.table.get(&body) else {
            return String::new();
        };
        cut_text(&body.0.parsed().1, max_bytes.min(MAX_READ) as usize).to_string()
    }

    fn drop(&mut self, body: Resource<MessageBody>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}
