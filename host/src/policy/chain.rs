//! The policy chain: the loaded modules in order, and one session's instances of them.
//!
//! A [`Chain`] is immutable and shared (`Arc`) by every session that started on it, so a
//! reload that builds a new chain never changes a session half-way. A [`SessionChain`]
//! holds one instance of each module for one SMTP session, so a module may keep state
//! from one hook to the next; its memory goes when the session ends.

use super::builtin;
use super::engine::{EPOCH_TICK, Policy, PolicyEngine, PolicyPre, sluice::policy::types};
use super::host::{ConfigValue, DeliveryRequests, HostState, SessionFacts};
use super::manifest::{self, Mode, ModuleSource, OnError, PolicySpec};
use super::message::{MessageBody, MessageData};
use crate::smtp::Reply;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
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
    pub fn as_str(self) -> &'static str {
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

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
            Verdict::Tempfail => "tempfail",
            Verdict::Discard => "discard",
            Verdict::Quarantine => "quarantine",
        }
    }
}

/// What one module's call at one hook came to: a line of a message's policy trace.
#[derive(Debug, Clone)]
pub struct Decided {
    pub hook: Hook,
    /// What the hook was about: the HELO name, the sender or the recipient.
    pub subject: Option<String>,
    pub module: Arc<str>,
    /// The verdict, or the failure when the module failed.
    pub outcome: Result<Verdict, String>,
    pub reply: Option<Reply>,
    pub rewrites: Vec<Rewrite>,
    pub elapsed: Duration,
    /// A dry-run module's decision: logged, not applied.
    pub dry_run: bool,
}

impl fmt::Display for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry = if self.dry_run { "(dry-run)" } else { "" };
        match &self.outcome {
            Ok(verdict) => write!(f, "{}{dry}={}", self.module, verdict.as_str())?,
            Err(failure) => write!(f, "{}{dry}=failed ({failure})", self.module)?,
        }
        if let Some(reply) = &self.reply {
            write!(f, " \"{reply}\"")?;
        }
        if !self.rewrites.is_empty() {
            write!(f, " rewrites={:?}", self.rewrites)?;
        }
        write!(f, " {}us", self.elapsed.as_micros())
    }
}

/// Formats a trace as one log line: `hook [subject]: module=verdict 12us, ...; next hook ...`.
pub fn format_trace(trace: &[Decided]) -> String {
    let mut line = String::new();
    let mut last: Option<(Hook, Option<&str>)> = None;
    for d in trace {
        let key = (d.hook, d.subject.as_deref());
        if last == Some(key) {
            line.push_str(", ");
        } else {
            if last.is_some() {
                line.push_str("; ");
            }
            line.push_str(d.hook.as_str());
            if let Some(subject) = &d.subject {
                let _ = write!(line, " <{subject}>");
            }
            line.push_str(": ");
            last = Some(key);
        }
        let _ = write!(line, "{d}");
    }
    line
}

/// A module's counts since its chain was loaded, for `sluice status` and metrics.
#[derive(Debug, Default)]
pub struct ModuleStats {
    calls: AtomicU64,
    verdicts: [AtomicU64; 6],
    errors: AtomicU64,
    timeouts: AtomicU64,
    micros: AtomicU64,
}

/// A snapshot of [`ModuleStats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub r#continue: u64,
    pub accept: u64,
    pub reject: u64,
    pub tempfail: u64,
    pub discard: u64,
    pub quarantine: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub micros: u64,
}

impl ModuleStats {
    fn record(&self, outcome: Result<Verdict, &Failure>, elapsed: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let counter = match outcome {
            Ok(verdict) => &self.verdicts[verdict as usize],
            Err(Failure::Timeout(_)) => &self.timeouts,
            Err(_) => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let v = &self.verdicts;
        StatsSnapshot {
            calls: get(&self.calls),
            r#continue: get(&v[Verdict::Continue as usize]),
            accept: get(&v[Verdict::Accept as usize]),
            reject: get(&v[Verdict::Reject as usize]),
            tempfail: get(&v[Verdict::Tempfail as usize]),
            discard: get(&v[Verdict::Discard as usize]),
            quarantine: get(&v[Verdict::Quarantine as usize]),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            micros: get(&self.micros),
        }
    }
}

/// Why a module's call failed.
#[derive(Debug)]
enum Failure {
    /// Ran past its time limit (epoch interruption).
    Timeout(Duration),
    /// Trapped, ran out of memory, or answered something invalid.
    Broken(String),
    /// Failed at an earlier hook of this session, so it is not entered again.
    FailedEarlier,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(limit) => write!(f, "ran past its time limit of {limit:?}"),
            Failure::Broken(reason) => f.write_str(reason),
            Failure::FailedEarlier => f.write_str("failed earlier in this session"),
        }
    }
}

/// One module, compiled and pre-linked, ready to instantiate per session.
struct LoadedModule {
    name: Arc<str>,
    source: String,
    /// SHA-256 of the module's bytes.
    sha256: String,
    mode: Mode,
    on_error: OnError,
    /// The epoch deadline for one hook call, in ticks.
    deadline_ticks: u64,
    timeout: Duration,
    max_memory: usize,
    config: Arc<BTreeMap<String, ConfigValue>>,
    pre: PolicyPre<HostState>,
    stats: ModuleStats,
}

/// A module of the running chain as `sluice status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub name: String,
    pub source: String,
    pub sha256: String,
    pub mode: String,
    pub stats: StatsSnapshot,
}

/// The policy chain as loaded: immutable, shared by the sessions that use it.
pub struct Chain {
    engine: PolicyEngine,
    modules: Vec<LoadedModule>,
    /// When this chain was loaded.
    loaded_at: SystemTime,
    /// Its hooks run on the session's own worker thread (see [`SessionChain::run`]) until
    /// one of its calls has taken longer than [`INLINE_LIMIT`].
    inline: AtomicBool,
}

/// The most CPU time a chain's hook call may take on the session's own worker thread:
/// past it, the chain's calls move to where blocking is allowed.
const INLINE_LIMIT: Duration = Duration::from_millis(2);

/// Is this panic tokio's refusal to block a worker thread (from wasmtime-wasi's `in_tokio`)?
pub fn blocking_in_runtime(panic: &(dyn std::any::Any + Send)) -> bool {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.contains("Cannot start a runtime from within a runtime")
}

/// CPU time used by the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
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
                let (pre, info) = engine
                    .inspect(&bytes)
                    .map_err(|e| format!("policy `{}`: {e}", spec.name))?;
                tracing::info!(
                    module = spec.name,
                    sha256 = &info.sha256[..12],
                    cached = info.cached,
                    millis = info.compile_time.as_millis() as u64,
                    "policy module ready"
                );
                Ok(LoadedModule {
                    source: spec.source.to_string(),
                    sha256: info.sha256,
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
                    stats: ModuleStats::default(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Chain {
            engine: engine.clone(),
            modules,
            loaded_at: SystemTime::now(),
            inline: AtomicBool::new(true),
        })
    }

    /// The modules' names, in chain order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| &*m.name).collect()
    }

    /// When the chain was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The SHA-256 of every module in the chain.
    pub fn hashes(&self) -> std::collections::HashSet<String> {
        self.modules.iter().map(|m| m.sha256.clone()).collect()
    }

    /// Every module with its counts since the chain was loaded.
    pub fn status(&self) -> Vec<ModuleStatus> {
        self.modules
            .iter()
            .map(|m| ModuleStatus {
                name: m.name.to_string(),
                source: m.source.clone(),
                sha256: m.sha256.clone(),
                mode: match m.mode {
                    Mode::Enforce => "enforce",
                    Mode::DryRun => "dry-run",
                }
                .into(),
                stats: m.stats.snapshot(),
            })
            .collect()
    }

    /// Instantiates every module for a new SMTP session.
    pub fn start_session(self: &Arc<Self>, facts: Arc<SessionFacts>) -> SessionChain {
        let requests = Arc::new(DeliveryRequests::default());
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
                        .table_elements(MAX_TABLE_ELEMENTS)
                        .trap_on_grow_failure(true)
                        .build(),
                    counters: self.engine.counters().clone(),
                    registry: self.engine.registry().clone(),
                    requests: requests.clone(),
                    dry_run: module.mode == Mode::DryRun,
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
            facts,
            trace: Vec::new(),
            requests,
        }
    }
}

/// Elements of a module's tables at most: far more than any policy needs, far less than
/// what would let a module exhaust the host's memory through tables.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Entries of a session's policy trace kept at most.
const MAX_TRACE: usize = 2000;

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
    facts: Arc<SessionFacts>,
    /// What each module decided, since the session began or the last transaction ended.
    trace: Vec<Decided>,
    /// What the modules asked of the delivery of the current transaction.
    requests: Arc<DeliveryRequests>,
}

type HookCall<'a> =
    dyn FnMut(&Policy, &mut Store<HostState>) -> wasmtime::Result<types::Decision> + 'a;

impl SessionChain {
    /// Replaces the facts every module sees from now on.
    pub fn set_facts(&mut self, facts: &Arc<SessionFacts>) {
        self.facts = facts.clone();
        for instance in self.instances.iter_mut().flatten() {
            instance.store.data_mut().facts = facts.clone();
        }
    }

    /// What the modules asked of the delivery of the current transaction.
    pub fn delivery_requests(&self) -> &DeliveryRequests {
        &self.requests
    }

    /// The trace of the transaction that just ended (with the connect and helo decisions
    /// before it); the transaction's part is then forgotten, the session's part kept.
    pub fn take_transaction_trace(&mut self) -> Vec<Decided> {
        // Only the session's few entries are copied; the transaction's move out.
        let session: Vec<Decided> = self
            .trace
            .iter()
            .filter(|d| matches!(d.hook, Hook::Connect | Hook::Helo))
            .cloned()
            .collect();
        std::mem::replace(&mut self.trace, session)
    }

    /// The client connected.
    pub fn on_connect(&mut self) -> ChainDecision {
        self.run(Hook::Connect, None, &mut |p, s| {
            p.sluice_policy_hooks().call_on_connect(s)
        })
    }

    /// HELO or EHLO.
    pub fn on_helo(&mut self, name: &str) -> ChainDecision {
        // A new EHLO replaces what the last one decided.
        self.trace.retain(|d| d.hook == Hook::Connect);
        self.run(Hook::Helo, Some(name), &mut |p, s| {
            p.sluice_policy_hooks().call_on_helo(s, name)
        })
    }

    /// MAIL FROM.
    pub fn on_mail_from(
        &mut self,
        sender: &str,
        params: &[(String, Option<String>)],
    ) -> ChainDecision {
        self.run(Hook::MailFrom, Some(sender), &mut |p, s| {
            p.sluice_policy_hooks().call_on_mail_from(s, sender, params)
        })
    }

    /// RCPT TO.
    pub fn on_rcpt(
        &mut self,
        recipient: &str,
        params: &[(String, Option<String>)],
    ) -> ChainDecision {
        self.run(Hook::Rcpt, Some(recipient), &mut |p, s| {
            p.sluice_policy_hooks().call_on_rcpt(s, recipient, params)
        })
    }

    /// The end of DATA: the header fields and the message as received.
    pub fn on_data(
        &mut self,
        headers: &[(String, String)],
        message: &Arc<MessageData>,
    ) -> ChainDecision {
        let headers: Vec<types::Header> = headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        self.run(Hook::Data, None, &mut |p, s| {
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

    fn run(&mut self, hook: Hook, subject: Option<&str>, call: &mut HookCall<'_>) -> ChainDecision {
        // Hook calls take microseconds, and handing the worker thread over to another for
        // each (block_in_place) cost a sixth of the relay's throughput: so a chain runs on
        // the session's worker while its calls are quick. A module may, though, run for its
        // whole time limit, holding a worker other sessions need (once per chain, 50 ms by
        // default): a chain that has once made a call longer than INLINE_LIMIT runs where
        // blocking is allowed from then on. So does one whose module used a WASI call that
        // blocks on tokio (writing to stdout or stderr, which discard what they get): that
        // panics on a worker, and the call fails (see `run_modules`).
        let inline = self.chain.inline.load(Ordering::Relaxed);
        // CPU time, not wall time: on a busy machine a quick call may wait for a core.
        let started = thread_cpu_time();
        let decision = match tokio::runtime::Handle::try_current() {
            Ok(rt)
                if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread && !inline =>
            {
                tokio::task::block_in_place(|| self.run_modules(hook, subject, call))
            }
            _ => self.run_modules(hook, subject, call),
        };
        let spent = thread_cpu_time().saturating_sub(started);
        if inline && spent > INLINE_LIMIT {
            self.chain.inline.store(false, Ordering::Relaxed);
            tracing::info!(
                hook = hook.as_str(),
                cpu_millis = spent.as_millis() as u64,
                "a slow policy call: this chain runs off the session threads from now on"
            );
        }
        decision
    }

    fn run_modules(
        &mut self,
        hook: Hook,
        subject: Option<&str>,
        call: &mut HookCall<'_>,
    ) -> ChainDecision {
        let mut rewrites = Vec::new();
        let queue_id = self.facts.queue_id.as_deref().unwrap_or("-");
        for (module, slot) in self.chain.modules.iter().zip(self.instances.iter_mut()) {
            let started = Instant::now();
            let outcome = match slot {
                Some(instance) => {
                    instance.store.set_epoch_deadline(module.deadline_ticks);
                    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        call(&instance.bindings, &mut instance.store)
                    }));
                    match called {
                        Ok(result) => result
                            .map_err(|e| failure(&e, module.timeout))
                            .and_then(|d| check_decision(d).map_err(Failure::Broken)),
                        // A WASI call that blocks on tokio (stdout, stderr, sleep) cannot
                        // run on a session's thread: this call fails, and the chain runs
                        // where blocking is allowed from now on. Any other panic is a bug
                        // and goes on.
                        Err(panic) if blocking_in_runtime(&*panic) => {
                            self.chain.inline.store(false, Ordering::Relaxed);
                            Err(Failure::Broken(
                                "used blocking WASI I/O (stdout, stderr?) on a session's thread; this chain runs off the session threads from now on"
                                    .into(),
                            ))
                        }
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                None => Err(Failure::FailedEarlier),
            };
            let elapsed = started.elapsed();
            module
                .stats
                .record(outcome.as_ref().map(|(v, _, _)| *v), elapsed);
            let name = &*module.name;
            let (verdict, reply, module_rewrites) = match outcome {
                Ok(decision) => decision,
                Err(failure) => {
                    // A module that failed once is not entered again in this session: after a
                    // trap its instance may be in any state.
                    *slot = None;
                    tracing::warn!(module = name, hook = hook.as_str(), queue_id, on_error = ?module.on_error, "policy module failed: {failure}");
                    let tempfail = module.on_error == OnError::Tempfail;
                    let reply = tempfail.then(|| {
                        Reply::new(451, "4.3.0", "Temporary policy failure, try again later")
                    });
                    note(
                        &mut self.trace,
                        Decided {
                            hook,
                            subject: subject.map(str::to_string),
                            module: module.name.clone(),
                            outcome: Err(failure.to_string()),
                            reply: reply.clone(),
                            rewrites: Vec::new(),
                            elapsed,
                            dry_run: false,
                        },
                    );
                    if !tempfail {
                        continue;
                    }
                    return ChainDecision {
                        verdict: Verdict::Tempfail,
                        reply,
                        rewrites,
                        decided_by: Some(module.name.clone()),
                    };
                }
            };
            let dry_run = module.mode == Mode::DryRun;
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
            let decided = Decided {
                hook,
                subject: subject.map(str::to_string),
                module: module.name.clone(),
                outcome: Ok(verdict),
                reply: reply.clone(),
                rewrites: module_rewrites.clone(),
                elapsed,
                dry_run,
            };
            if dry_run {
                if verdict != Verdict::Continue || !module_rewrites.is_empty() {
                    tracing::info!(
                        queue_id,
                        "dry-run: would have decided: {} {decided}",
                        hook.as_str()
                    );
                }
                note(&mut self.trace, decided);
                continue;
            }
            if matches!(verdict, Verdict::Continue | Verdict::Accept) {
                tracing::debug!(queue_id, "policy decision: {} {decided}", hook.as_str());
            } else {
                tracing::info!(queue_id, "policy decision: {} {decided}", hook.as_str());
            }
            note(&mut self.trace, decided);
            rewrites.extend(module_rewrites);
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

/// Adds a line to a session's trace, within its bound.
fn note(trace: &mut Vec<Decided>, decided: Decided) {
    if trace.len() < MAX_TRACE {
        trace.push(decided);
    }
}

fn failure(error: &wasmtime::Error, timeout: Duration) -> Failure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout(timeout),
        Some(trap) => Failure::Broken(format!("trapped: {trap}")),
        // The root cause only: the rest is a multi-line wasm backtrace, not for a log line.
        None => Failure::Broken(format!("failed: {}", error.root_cause())),
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
