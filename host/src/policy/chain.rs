//! The policy chain: the loaded modules in order, and one session's instances of them.
//!
//! A [`Chain`] is immutable and shared (`Arc`) by every session that started on it, so a
//! reload that builds a new chain never changes a session half-way. A [`SessionChain`]
//! holds one instance of each module for one SMTP session, so a module may keep state
//! from one hook to the next; its memory goes when the session ends.

use super::builtin;
use super::engine::{EPOCH_TICK, Policy, PolicyEngine, PolicyPre, sluice::policy::types};
use super::host::{ConfigValue, HostState, MessageBody, SessionFacts};
use super::manifest::{self, Mode, ModuleSource, OnError, PolicySpec};
use crate::smtp::Reply;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Store, StoreLimitsBuilder, Trap};

/// The SMTP stage a hook belongs to; names as in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Helo,
    MailFrom,
    Rcpt,
    Data,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Helo => "helo",
            Hook::MailFrom => "mail-from",
            Hook::Rcpt => "rcpt",
            Hook::Data => "data",
        }
    }
}

/// The chain's verdict at one hook (see wit/policy.wit for what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    Quarantine,
}

/// A change to the envelope or message asked for by a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    SetSender(String),
    ReplaceRecipient(String),
    AddRecipient(String),
    AddHeader(String, String),
    RemoveHeader(String),
    ReplaceHeader(String, String),
}

/// What the chain decided at one hook: the deciding verdict, its reply, and every
/// rewrite from the modules that ran, in order.
#[derive(Debug, Clone)]
pub struct ChainDecision {
    pub verdict: Verdict,
    pub reply: Option<Reply>,
    pub rewrites: Vec<Rewrite>,
    /// The module whose verdict ended the chain, if one did.
    pub decided_by: Option<Arc<str>>,
}

/// One module, compiled and pre-linked, ready to instantiate per session.
struct LoadedModule {
    name: Arc<str>,
    mode: Mode,
    on_error: OnError,
    /// The epoch deadline for one hook call, in ticks.
    deadline_ticks: u64,
    timeout: Duration,
    max_memory: usize,
    config: Arc<BTreeMap<String, ConfigValue>>,
    pre: PolicyPre<HostState>,
}

/// The policy chain as loaded: immutable, shared by the sessions that use it.
pub struct Chain {
    engine: PolicyEngine,
    modules: Vec<LoadedModule>,
}

impl Chain {
    /// Loads the chain described by `dir/policies.toml` (or the default chain when there is
    /// none), compiling and pre-linking every module. Any failure refuses the whole chain,
    /// with a message naming the module and the reason.
    pub fn load(engine: &PolicyEngine, dir: &Path) -> Result<Chain, String> {
        let specs = manifest::load(dir)?.unwrap_or_else(manifest::default_chain);
        Self::from_specs(engine, specs)
    }

    /// Compiles and pre-links the given chain.
    pub fn from_specs(engine: &PolicyEngine, specs: Vec<PolicySpec>) -> Result<Chain, String> {
        let modules = specs
            .into_iter()
            .map(|spec| {
                let bytes = match &spec.source {
                    ModuleSource::Builtin(name) => {
                        builtin::get(name).map(<[u8]>::to_vec).ok_or_else(|| {
                            format!(
                                "policy `{}`: there is no builtin:{name} (built in: {})",
                                spec.name,
                                builtin::names().join(", ")
                            )
                        })?
                    }
                    ModuleSource::File(path) => std::fs::read(path)
                        .map_err(|e| format!("policy `{}`: {}: {e}", spec.name, path.display()))?,
                };
                let pre = engine
                    .prepare(&bytes)
                    .map_err(|e| format!("policy `{}`: {e}", spec.name))?;
                Ok(LoadedModule {
                    name: spec.name.into(),
                    mode: spec.mode,
                    on_error: spec.on_error,
                    deadline_ticks: spec
                        .timeout
                        .as_micros()
                        .div_ceil(EPOCH_TICK.as_micros())
                        .max(1) as u64,
                    timeout: spec.timeout,
                    max_memory: spec.max_memory,
                    config: Arc::new(spec.config),
                    pre,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Chain {
            engine: engine.clone(),
            modules,
        })
    }

    /// The modules' names, in chain order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| &*m.name).collect()
    }

    /// Instantiates every module for a new SMTP session.
    pub fn start_session(self: &Arc<Self>, facts: Arc<SessionFacts>) -> SessionChain {
        let instances = self
            .modules
            .iter()
            .map(|module| {
                let state = HostState {
                    module: module.name.clone(),
                    config: module.config.clone(),
                    facts: facts.clone(),
                    limits: StoreLimitsBuilder::new()
                        .memory_size(module.max_memory)
                        .trap_on_grow_failure(true)
                        .build(),
                    table: ResourceTable::new(),
                    wasi: wasmtime_wasi::WasiCtx::builder().build(),
                };
                let mut store = Store::new(self.engine.engine(), state);
                store.limiter(|s| &mut s.limits);
                store.set_epoch_deadline(module.deadline_ticks);
                match module.pre.instantiate(&mut store) {
                    Ok(bindings) => Some(Instance { store, bindings }),
                    Err(e) => {
                        tracing::error!(module = &*module.name, error = %format!("{e:#}"), "policy module failed to start");
                        None
                    }
                }
            })
            .collect();
        SessionChain {
            chain: self.clone(),
            instances,
        }
    }
}

/// A module instance for one session.
struct Instance {
    store: Store<HostState>,
    bindings: Policy,
}

/// One session's instances of the chain. A module that failed is left out for the rest
/// of the session, and its `on_error` decides at every later hook.
pub struct SessionChain {
    chain: Arc<Chain>,
    instances: Vec<Option<Instance>>,
}

type HookCall<'a> =
    dyn FnMut(&Policy, &mut Store<HostState>) -> wasmtime::Result<types::Decision> + 'a;

impl SessionChain {
    /// Replaces the facts every module sees from now on.
    pub fn set_facts(&mut self, facts: &Arc<SessionFacts>) {
        for instance in self.instances.iter_mut().flatten() {
            instance.store.data_mut().facts = facts.clone();
        }
    }

    /// The client connected.
    pub fn on_connect(&mut self) -> ChainDecision {
        self.run(Hook::Connect, &mut |p, s| {
            p.sluice_policy_hooks().call_on_connect(s)
        })
    }

    /// HELO or EHLO.
    pub fn on_helo(&mut self, name: &str) -> ChainDecision {
        self.run(Hook::Helo, &mut |p, s| {
            p.sluice_policy_hooks().call_on_helo(s, name)
        })
    }

    /// MAIL FROM.
    pub fn on_mail_from(
        &mut self,
        sender: &str,
        params: &[(String, Option<String>)],
    ) -> ChainDecision {
        self.run(Hook::MailFrom, &mut |p, s| {
            p.sluice_policy_hooks().call_on_mail_from(s, sender, params)
        })
    }

    /// RCPT TO.
    pub fn on_rcpt(
        &mut self,
        recipient: &str,
        params: &[(String, Option<String>)],
    ) -> ChainDecision {
        self.run(Hook::Rcpt, &mut |p, s| {
            p.sluice_policy_hooks().call_on_rcpt(s, recipient, params)
        })
    }

    /// The end of DATA: the header fields and the message as received.
    pub fn on_data(&mut self, headers: &[(String, String)], message: &Bytes) -> ChainDecision {
        let headers: Vec<types::Header> = headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        self.run(Hook::Data, &mut |p, s| {
            let body: Resource<MessageBody> =
                s.data_mut().table.push(MessageBody(message.clone()))?;
            let rep = body.rep();
            let result = p
                .sluice_policy_hooks()
                .call_on_data(&mut *s, &headers, body);
            // The module only borrowed the body; take it back whatever happened.
            let _ = s
                .data_mut()
                .table
                .delete::<MessageBody>(Resource::new_own(rep));
            result
        })
    }

    fn run(&mut self, hook: Hook, call: &mut HookCall<'_>) -> ChainDecision {
        let mut rewrites = Vec::new();
        for (module, slot) in self.chain.modules.iter().zip(self.instances.iter_mut()) {
            let started = Instant::now();
            let outcome = match slot {
                Some(instance) => {
                    instance.store.set_epoch_deadline(module.deadline_ticks);
                    call(&instance.bindings, &mut instance.store)
                        .map_err(|e| failure_reason(&e, module.timeout))
                        .and_then(check_decision)
                }
                None => Err("failed earlier in this session".to_string()),
            };
            let elapsed = started.elapsed();
            let name = &*module.name;
            let (verdict, reply, module_rewrites) = match outcome {
                Ok(decision) => decision,
                Err(reason) => {
                    // A module that failed once is not entered again in this session: after a
                    // trap its instance may be in any state.
                    *slot = None;
                    tracing::warn!(module = name, hook = hook.as_str(), on_error = ?module.on_error, "policy module failed: {reason}");
                    match module.on_error {
                        OnError::Continue => continue,
                        OnError::Tempfail => {
                            return ChainDecision {
                                verdict: Verdict::Tempfail,
                                reply: Some(Reply::new(
                                    451,
                                    "4.3.0",
                                    "Temporary policy failure, try again later",
                                )),
                                rewrites,
                                decided_by: Some(module.name.clone()),
                            };
                        }
                    }
                }
            };
            if module.mode == Mode::DryRun {
                if verdict != Verdict::Continue || !module_rewrites.is_empty() {
                    tracing::info!(module = name, hook = hook.as_str(), ?verdict, reply = ?reply.as_ref().map(Reply::to_string), rewrites = ?module_rewrites, "dry-run: would have decided");
                }
                continue;
            }
            if matches!(verdict, Verdict::Continue | Verdict::Accept) {
                tracing::debug!(module = name, hook = hook.as_str(), ?verdict, elapsed_us = elapsed.as_micros() as u64, rewrites = ?module_rewrites, "policy decision");
            } else {
                tracing::info!(module = name, hook = hook.as_str(), ?verdict, reply = ?reply.as_ref().map(|r| r.to_string()), rewrites = ?module_rewrites, elapsed_us = elapsed.as_micros() as u64, "policy decision");
            }
            rewrites.extend(module_rewrites);
            let verdict = match verdict {
                Verdict::Discard | Verdict::Quarantine if hook != Hook::Data => {
                    tracing::warn!(
                        module = name,
                        hook = hook.as_str(),
                        "discard and quarantine mean something only at the data hook; taken as continue"
                    );
                    Verdict::Continue
                }
                v => v,
            };
            if verdict != Verdict::Continue {
                return ChainDecision {
                    verdict,
                    reply,
                    rewrites,
                    decided_by: Some(module.name.clone()),
                };
            }
        }
        ChainDecision {
            verdict: Verdict::Continue,
            reply: None,
            rewrites,
            decided_by: None,
        }
    }
}

fn failure_reason(error: &wasmtime::Error, timeout: Duration) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("ran past its time limit of {timeout:?}"),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("{error:#}"),
    }
}

/// Checks a module's decision and turns it into the host's types. A reply whose code does
/// not fit the verdict, or whose text could break the SMTP dialogue, is a module failure.
fn check_decision(d: types::Decision) -> Result<(Verdict, Option<Reply>, Vec<Rewrite>), String> {
    let verdict = match d.verdict {
        types::Verdict::Continue => Verdict::Continue,
        types::Verdict::Accept => Verdict::Accept,
        types::Verdict::Reject => Verdict::Reject,
        types::Verdict::Tempfail => Verdict::Tempfail,
        types::Verdict::Discard => Verdict::Discard,
        types::Verdict::Quarantine => Verdict::Quarantine,
    };
    let reply = match d.reply {
        None => None,
        Some(r) => {
            let class = match verdict {
                Verdict::Reject => 5,
                Verdict::Tempfail => 4,
                _ => 2,
            };
            if r.code / 100 != class || r.code % 100 > 59 {
                return Err(format!(
                    "reply code {} does not fit verdict {verdict:?}",
                    r.code
                ));
            }
            let reply = Reply::checked(r.code, &r.enhanced, &r.text)
                .ok_or_else(|| format!("invalid reply {} {} {:?}", r.code, r.enhanced, r.text))?;
            Some(reply)
        }
    };
    let rewrites = d
        .rewrites
        .into_iter()
        .map(|r| match r {
            types::Rewrite::SetSender(s) => Rewrite::SetSender(s),
            types::Rewrite::ReplaceRecipient(s) => Rewrite::ReplaceRecipient(s),
            types::Rewrite::AddRecipient(s) => Rewrite::AddRecipient(s),
            types::Rewrite::AddHeader(h) => Rewrite::AddHeader(h.name, h.value),
            types::Rewrite::RemoveHeader(n) => Rewrite::RemoveHeader(n),
            types::Rewrite::ReplaceHeader(h) => Rewrite::ReplaceHeader(h.name, h.value),
        })
        .collect();
    Ok((verdict, reply, rewrites))
}
