//! What the host lends a policy module: the imports of the contract.
//!
//! Each module instance has its own `Store<HostState>`: its own configuration, memory
//! limit and resource table, and a shared, read-only snapshot of the session's facts.
//! WASI is linked with an empty context: no files, no sockets, no environment.

use super::engine::sluice::policy::{config, log, message, session, types};
use bytes::Bytes;
use std::collections::BTreeMap;
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
}

/// A value from a module's `[policy.config]` table.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
    TextList(Vec<String>),
}

/// The message body handed to the data hook, read by the module on demand.
pub struct MessageBody(pub Bytes);

/// Largest single read a module may ask for, so one call cannot make the host copy a
/// whole large message into the module's memory at once.
const MAX_READ: u32 = 1 << 20;
/// Longest log message a module may write; the rest is cut.
const MAX_LOG: usize = 2048;

/// The data of one module instance's store.
pub struct HostState {
    pub module: Arc<str>,
    pub config: Arc<BTreeMap<String, ConfigValue>>,
    pub facts: Arc<SessionFacts>,
    pub limits: StoreLimits,
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
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG {
            let cut = (0..=MAX_LOG).rev().find(|&i| message.is_char_boundary(i));
            message.truncate(cut.unwrap_or(0));
            message.push_str(" [cut]");
        }
        let module = &*self.module;
        let peer = self.facts.peer.ip();
        match level {
            log::Level::Trace => tracing::trace!(module, %peer, "{message}"),
            log::Level::Debug => tracing::debug!(module, %peer, "{message}"),
            log::Level::Info => tracing::info!(module, %peer, "{message}"),
            log::Level::Warn => tracing::warn!(module, %peer, "{message}"),
            log::Level::Error => tracing::error!(module, %peer, "{message}"),
        }
    }
}

impl message::Host for HostState {}

impl message::HostBody for HostState {
    fn size(&mut self, body: Resource<MessageBody>) -> u64 {
        self.table.get(&body).map(|b| b.0.len() as u64).unwrap_or(0)
    }

    fn read(&mut self, body: Resource<MessageBody>, offset: u64, len: u32) -> Vec<u8> {
        let Ok(body) = self.table.get(&body) else {
            return Vec::new();
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(body.0.len());
        let end = start
            .saturating_add(len.min(MAX_READ) as usize)
            .min(body.0.len());
        body.0[start..end].to_vec()
    }

    fn drop(&mut self, body: Resource<MessageBody>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}
