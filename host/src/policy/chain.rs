//! The policy chain: the loaded modules in order, and one session's instances of them.
//!
//! A [`Chain`] is immutable and shared (`Arc`) by every session that started on it, so a
//! reload that builds a new chain never changes a session half-way. A [`SessionChain`]
//! holds one instance of each module for one SMTP session, so a module may keep state
//! from one hook to the next. A module is instantiated when one of its hooks is first
//! called, under the same deadline as a call.
//!
//! Making an instance, and tearing its memory down after, costs the relay far more than the
//! hook calls of a session (measured: about 25 µs a module against 1 µs a call). So when a
//! session ends, an instance whose module exports the contract's `lifecycle.reset` (every
//! module built with the Rust SDK does) is kept, and a later session starts on it after
//! `reset` has made the module forget the last session. An instance that failed, or was
//! left in the middle of a call, is never kept; nor one of a module `reuse = false`.
//!
//! Every call is a future under the module's `timeout` ([`within`]): the
//! deadline covers the module's own code, which yields at every epoch tick, and the host
//! calls it makes (a WASI clock it sleeps on, a counter). A call past its deadline is
//! dropped, and the module has failed for the session; its `on_error` decides.

use super::builtin;
use super::engine::{Policy, PolicyEngine, PolicyIndices, PolicyPre, sluice::policy::types};
use super::error::LoadError;
use super::host::{ConfigValue, DeliveryRequests, HostState, MemoryLimit, SessionFacts};
use super::manifest::{self, Mode, ModuleSource, OnError, PolicySpec};
use super::message::{MessageBody, MessageData};
use super::output::{CapturedOutput, OutputBudget};
use crate::protocol::Reply;
use serde::{Deserialize, Serialize};
use sluice_mail::reply::ReplyClass;
use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::{ComponentExportIndex, Resource, ResourceTable, TypedFunc};
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
    /// Every hook, in the order a session reaches them.
    pub const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Helo,
        Hook::MailFrom,
        Hook::Rcpt,
        Hook::Data,
    ];

    /// The hook named `name` (`connect`, `helo`, `mail-from`, `rcpt`, `data`).
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.as_str() == name)
    }

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

/// The hooks a module is called at. A module is instantiated for a session only when the
/// session reaches one of them, so a module that decides at RCPT costs an idle session,
/// or one refused at its greeting, nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSet(u8);

impl HookSet {
    /// Every hook: for a module that does not say which it implements.
    pub const ALL: HookSet = HookSet(0b1_1111);

    /// The set of `hooks`.
    pub fn of(hooks: &[Hook]) -> HookSet {
        HookSet(hooks.iter().fold(0, |set, h| set | 1 << *h as u8))
    }

    /// The set of hooks named as `policies.toml` names them; `None` if a name is unknown.
    pub fn named(names: &[String]) -> Option<HookSet> {
        let hooks = names
            .iter()
            .map(|name| Hook::from_name(name))
            .collect::<Option<Vec<Hook>>>()?;
        Some(HookSet::of(&hooks))
    }

    pub fn contains(self, hook: Hook) -> bool {
        self.0 & (1 << hook as u8) != 0
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

impl Decided {
    /// The hook and what it was about: `rcpt <a@example.org>`.
    pub fn heading(&self) -> String {
        match &self.subject {
            Some(subject) => format!("{} <{subject}>", self.hook.as_str()),
            None => self.hook.as_str().to_string(),
        }
    }
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
            let _ = write!(line, "{}: ", d.heading());
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
    /// Instances made, and sessions started on an instance an earlier session used.
    instances: AtomicU64,
    reused: AtomicU64,
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
    pub instances: u64,
    pub reused: u64,
}

impl Failure {
    /// The kind of failure, as the metrics count it.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Start(_) => "instantiate",
            Failure::Trapped(_) => "trap",
            Failure::Broken(_) => "invalid",
            Failure::OutOfMemory(_) => "memory",
            Failure::FailedEarlier => "failed_earlier",
            Failure::Capacity(_) => "capacity",
            Failure::Counters(_) => "counters",
        }
    }
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
            instances: get(&self.instances),
            reused: get(&self.reused),
        }
    }
}

/// Why a module's call failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Ran past its time limit, in its own code or in a host call it made.
    #[error("ran past its time limit of {0:?}")]
    Timeout(Duration),
    /// Could not be instantiated for this session.
    #[error("failed to start: {0}")]
    Start(String),
    /// Trapped, or failed in a host call.
    #[error("{0}")]
    Trapped(String),
    /// Answered something invalid.
    #[error("{0}")]
    Broken(String),
    /// Asked for more memory than its `max_memory`.
    #[error("{0}")]
    OutOfMemory(String),
    /// Failed at an earlier hook of this session, so it is not entered again.
    #[error("failed earlier in this session")]
    FailedEarlier,
    /// The relay had no instance (or fiber stack) left to run it: the relay's failure, not
    /// the module's, so the chain fails closed whatever the module's `on_error` says.
    #[error("no capacity left to run it: {0}")]
    Capacity(String),
    /// A count it asked for could not be made (`[counters] on_unavailable = "tempfail"`):
    /// the relay's failure too, so the chain fails closed whatever `on_error` says.
    #[error("{0}")]
    Counters(String),
}

/// One module, compiled and pre-linked, ready to instantiate per session.
struct LoadedModule {
    name: Arc<str>,
    source: String,
    /// SHA-256 of the module's bytes.
    sha256: String,
    mode: Mode,
    on_error: OnError,
    /// The hooks it is instantiated and called at.
    hooks: HookSet,
    /// The time limit of one hook call (and of instantiating the module).
    timeout: Duration,
    max_memory: usize,
    config: Arc<BTreeMap<String, ConfigValue>>,
    pre: PolicyPre<HostState>,
    /// Where the hooks are among the module's exports (looked up once, not per instance).
    indices: PolicyIndices,
    /// Its `lifecycle.reset`, when it has one and `reuse` is on: then its instances are kept
    /// between sessions.
    reset: Option<ComponentExportIndex>,
    /// Its `validation.validate-config`, when it has one: it checks its configuration.
    validate: Option<ComponentExportIndex>,
    /// Its `declared-hooks.hooks`, when it has one and `policies.toml` does not name the
    /// module's hooks: then it is called only at the hooks it declares.
    declared_hooks: Option<ComponentExportIndex>,
    /// Instances left by sessions that ended, the most recent last.
    idle: Mutex<Vec<Idle>>,
    stats: ModuleStats,
    /// How many lines of stdout and stderr it may still log this second.
    output_budget: OutputBudget,
}

/// An instance kept between sessions.
struct Idle {
    instance: Box<Instance>,
    since: Instant,
}

/// The time a module has to check its configuration (at least; its hook time limit when
/// longer). It runs once, at load, where the first call into a large module (mapping a
/// Python module's memory image) may take far longer than a hook's limit allows.
const CONFIG_CHECK_TIME_LIMIT: Duration = Duration::from_secs(10);

/// Instances of one module kept between sessions at most: as many as the sessions a busy
/// relay runs at once; past that, a session makes a new one.
const MAX_IDLE: usize = 64;
/// An instance kept this long without a session is let go, so that a burst's instances do
/// not hold their memory for good.
const MAX_IDLE_TIME: Duration = Duration::from_secs(60);
/// Sessions one instance serves at most, so that whatever its heap has come to (a slow
/// leak, fragmentation) starts over now and then, at a negligible cost.
const MAX_SESSIONS: u32 = 1000;

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
    /// A newer chain has replaced it: its sessions finish on it, but keep no instance.
    retired: std::sync::atomic::AtomicBool,
    /// Shown every module's decision as it is made (`sluice session`).
    observer: Option<DecisionObserver>,
}

/// What is told of every module's decision, dry-run ones included, as it is made.
pub type DecisionObserver = Box<dyn Fn(&Decided) + Send + Sync>;

impl Chain {
    /// Loads the chain described by `dir/policies.toml` (or the default chain when there is
    /// none), compiling and pre-linking every module. Any failure refuses the whole chain,
    /// with a message naming the module and the reason.
    pub fn load(engine: &PolicyEngine, dir: &Path) -> Result<Chain, LoadError> {
        let specs = manifest::load(dir)?.unwrap_or_else(manifest::default_chain);
        Self::from_specs(engine, specs)
    }

    /// Loads the chain as [`Chain::load`] does (on a blocking thread: compiling is long
    /// work) and consults its modules ([`Chain::consult_modules`]): the chain the relay
    /// runs, at start and at every reload, and the one `sluice session` runs.
    pub async fn open(engine: &PolicyEngine, dir: &Path) -> Result<Chain, LoadError> {
        let (engine, dir) = (engine.clone(), dir.to_path_buf());
        let mut chain = tokio::task::spawn_blocking(move || Chain::load(&engine, &dir)).await??;
        chain.consult_modules().await?;
        Ok(chain)
    }

    /// Asks each module what the contract lets it say once, at load, on an instance of its
    /// own with no client: whether its configuration is right (`validation`), where the
    /// first refusal, with the module's message, refuses the chain; and at which hooks it
    /// acts (`declared-hooks`), where `policies.toml` does not say. What a module writes to
    /// stderr meanwhile is logged, as at a hook.
    pub async fn consult_modules(&mut self) -> Result<(), LoadError> {
        let facts = Arc::new(SessionFacts::new(
            std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            "",
        ));
        for module in &mut self.modules {
            if module.validate.is_none() && module.declared_hooks.is_none() {
                continue;
            }
            let failed = |error: String| LoadError::ConfigCheck {
                policy: module.name.to_string(),
                error,
            };
            let time_limit = CONFIG_CHECK_TIME_LIMIT.max(module.timeout);
            let deadline = Instant::now() + time_limit;
            let mut instance = module
                .instantiate(&self.engine, &facts, &Arc::default(), time_limit)
                .await
                .map_err(|failure| failed(failure.to_string()))?;
            let answered = async {
                let checked = match &module.validate {
                    Some(index) => {
                        let validate = instance
                            .handle
                            .get_typed_func::<(), (Result<(), String>,)>(
                                &mut instance.store,
                                index,
                            )?;
                        validate.call_async(&mut instance.store, ()).await?.0
                    }
                    None => Ok(()),
                };
                let declared = match &module.declared_hooks {
                    Some(index) => {
                        let hooks = instance
                            .handle
                            .get_typed_func::<(), (Vec<String>,)>(&mut instance.store, index)?;
                        Some(hooks.call_async(&mut instance.store, ()).await?.0)
                    }
                    None => None,
                };
                Ok::<_, wasmtime::Error>((checked, declared))
            };
            let outcome = within(deadline, answered).await;
            module.log_output([&instance.stdout, &instance.stderr], &facts, None, true);
            let (checked, declared) = match outcome {
                Some(Ok(answers)) => answers,
                Some(Err(e)) => return Err(failed(format!("{e:#}"))),
                None => return Err(failed(format!("no answer within {time_limit:?}"))),
            };
            if let Err(message) = checked {
                return Err(LoadError::Config {
                    policy: module.name.to_string(),
                    message,
                });
            }
            if let Some(declared) = declared {
                match HookSet::named(&declared) {
                    Some(hooks) => module.hooks = hooks,
                    None => tracing::warn!(
                        module = &*module.name,
                        "the module declares hooks this relay does not know ({declared:?}); calling it at every hook"
                    ),
                }
            }
        }
        Ok(())
    }

    /// Compiles and pre-links the given chain.
    pub fn from_specs(engine: &PolicyEngine, specs: Vec<PolicySpec>) -> Result<Chain, LoadError> {
        let modules = specs
            .into_iter()
            .map(|spec| {
                let bytes = match &spec.source {
                    ModuleSource::Builtin(name) => builtin::get(name)
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| LoadError::NoBuiltin {
                            policy: spec.name.clone(),
                            name: name.clone(),
                            available: builtin::names().join(", "),
                        })?,
                    ModuleSource::File(path) => {
                        std::fs::read(path).map_err(|source| LoadError::ReadModule {
                            policy: spec.name.clone(),
                            path: path.clone(),
                            source,
                        })?
                    }
                };
                let (pre, info) = engine.inspect(&bytes).map_err(|source| LoadError::Module {
                    policy: spec.name.clone(),
                    source,
                })?;
                let indices =
                    PolicyIndices::new(pre.instance_pre()).map_err(|source| LoadError::Module {
                        policy: spec.name.clone(),
                        source: super::error::ModuleError::Hooks(source),
                    })?;
                tracing::info!(
                    module = spec.name,
                    sha256 = &info.sha256[..12],
                    cached = info.cached,
                    millis = info.compile_time.as_millis() as u64,
                    "policy module ready"
                );
                // Named in policies.toml, or known for a built-in module (builtin.rs): the
                // module's own declaration is not asked for.
                let hooks_given =
                    spec.hooks.is_some() || matches!(spec.source, ModuleSource::Builtin(_));
                let hooks = spec.hooks.unwrap_or_else(|| match &spec.source {
                    ModuleSource::Builtin(name) => builtin::hooks(name),
                    ModuleSource::File(_) => HookSet::ALL,
                });
                Ok(LoadedModule {
                    hooks,
                    source: spec.source.to_string(),
                    sha256: info.sha256,
                    name: spec.name.into(),
                    mode: spec.mode,
                    on_error: spec.on_error,
                    timeout: spec.timeout,
                    max_memory: spec.max_memory,
                    config: Arc::new(spec.config),
                    pre,
                    indices,
                    reset: info.reset.filter(|_| spec.reuse),
                    validate: info.validate,
                    declared_hooks: info.declared_hooks.filter(|_| !hooks_given),
                    idle: Mutex::new(Vec::new()),
                    stats: ModuleStats::default(),
                    output_budget: OutputBudget::default(),
                })
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(Chain {
            engine: engine.clone(),
            modules,
            observer: None,
            loaded_at: SystemTime::now(),
            retired: Default::default(),
        })
    }

    /// Has `observer` told of every module's decision, dry-run ones included, as it is
    /// made: before the session answers the client.
    pub fn with_observer(mut self, observer: DecisionObserver) -> Chain {
        self.observer = Some(observer);
        self
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

    /// A newer chain has replaced this one: the instances it keeps, and those its last
    /// sessions leave, go, so that their places in the instance pool are free for the new
    /// chain's sessions.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.release_idle();
    }

    /// Lets go of the instances kept longer than [`MAX_IDLE_TIME`] without a session: a
    /// quiet relay gives back what a burst of sessions left (the relay calls this every
    /// half minute).
    pub fn trim_idle(&self) {
        for module in &self.modules {
            module.trim_idle(Instant::now());
        }
    }

    /// Lets every instance kept between sessions go, so that their places in the instance
    /// pool are free again; `false` when none was kept.
    fn release_idle(&self) -> bool {
        let mut released = false;
        for module in &self.modules {
            let idle = std::mem::take(&mut *module.idle.lock().unwrap_or_else(|e| e.into_inner()));
            released |= !idle.is_empty();
        }
        released
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

    /// One session's view of the chain; each module is instantiated when one of its hooks
    /// is first called.
    pub fn start_session(self: &Arc<Self>, facts: Arc<SessionFacts>) -> SessionChain {
        SessionChain {
            chain: self.clone(),
            slots: self.modules.iter().map(|_| Slot::NotStarted).collect(),
            facts,
            trace: Vec::new(),
            requests: Arc::new(DeliveryRequests::default()),
        }
    }
}

impl LoadedModule {
    /// A new instance of the module for one session, in a store of its own with the
    /// module's memory limit, its configuration and the session's facts. Instantiating
    /// runs the module's start code: it is bounded by `time_limit` (the module's hook time
    /// limit, for a session).
    async fn instantiate(
        &self,
        engine: &PolicyEngine,
        facts: &Arc<SessionFacts>,
        requests: &Arc<DeliveryRequests>,
        time_limit: Duration,
    ) -> Result<Instance, Failure> {
        let (stdout, stderr) = (CapturedOutput::default(), CapturedOutput::default());
        let mut wasi = wasmtime_wasi::WasiCtx::builder();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        if let Some(clock) = facts.clock {
            wasi.wall_clock(clock);
        }
        let wasi = wasi.build();
        let state = HostState {
            module: self.name.clone(),
            config: self.config.clone(),
            facts: facts.clone(),
            limits: MemoryLimit {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.max_memory)
                    .table_elements(MAX_TABLE_ELEMENTS)
                    .trap_on_grow_failure(true)
                    .build(),
                refused: false,
            },
            counters: engine.counters().clone(),
            registry: engine.registry().clone(),
            requests: requests.clone(),
            dry_run: self.mode == Mode::DryRun,
            table: resource_table(),
            wasi,
        };
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Give the worker back at every epoch tick: a module computing for long shares the
        // thread with the sessions beside it, and its deadline (a timer) can fire. The
        // first tick counts from now.
        store.epoch_deadline_async_yield_and_update(1);
        store.set_epoch_deadline(1);
        let deadline = Instant::now() + time_limit;
        let started = within(deadline, async {
            let instance = self
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await?;
            let bindings = self.indices.load(&mut store, &instance)?;
            let reset = match &self.reset {
                Some(reset) => Some(instance.get_typed_func::<(), ()>(&mut store, reset)?),
                None => None,
            };
            wasmtime::Result::Ok((instance, bindings, reset))
        })
        .await;
        let failure = match started {
            Some(Ok((handle, bindings, reset))) => {
                self.stats.instances.fetch_add(1, Ordering::Relaxed);
                return Ok(Instance {
                    store,
                    handle,
                    bindings,
                    reset,
                    stdout,
                    stderr,
                    sessions: 1,
                    busy: false,
                });
            }
            Some(Err(e)) if out_of_capacity(&e) => Failure::Capacity(e.to_string()),
            Some(Err(e)) => Failure::Start(format!("{e:#}")),
            None => Failure::Timeout(time_limit),
        };
        // What its start code printed may say why it failed.
        self.log_output([&stdout, &stderr], facts, None, true);
        Err(failure)
    }

    /// An instance for a session: one an earlier session left, after its `reset`, or else a
    /// new one.
    async fn start(
        &self,
        engine: &PolicyEngine,
        facts: &Arc<SessionFacts>,
        requests: &Arc<DeliveryRequests>,
    ) -> Result<Box<Instance>, Failure> {
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(Idle { mut instance, .. }) = kept {
            match self.restart(&mut instance, facts, requests).await {
                Ok(()) => {
                    self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(instance);
                }
                Err(failure) => tracing::warn!(
                    module = &*self.name,
                    "policy module could not start over; a new instance instead: {failure}"
                ),
            }
        }
        self.instantiate(engine, facts, requests, self.timeout)
            .await
            .map(Box::new)
    }

    /// Starts a new session on an instance an earlier session used: the module's `reset`,
    /// under the module's time limit, with the new session's facts.
    async fn restart(
        &self,
        instance: &mut Instance,
        facts: &Arc<SessionFacts>,
        requests: &Arc<DeliveryRequests>,
    ) -> Result<(), Failure> {
        let Some(reset) = instance.reset else {
            return Err(Failure::Broken("it has no reset".into()));
        };
        let state = instance.store.data_mut();
        state.facts = facts.clone();
        state.requests = requests.clone();
        instance.store.set_epoch_deadline(1);
        instance.sessions += 1;
        let deadline = Instant::now() + self.timeout;
        let outcome = within(deadline, reset.call_async(&mut instance.store, ())).await;
        self.log_output([&instance.stdout, &instance.stderr], facts, None, false);
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(failure(&e, instance.store.data().limits.refused)),
            None => Err(Failure::Timeout(self.timeout)),
        }
    }

    /// The session that used `instance` ended: it is kept for a later session if it may be.
    fn keep(&self, instance: Box<Instance>) {
        if instance.reset.is_none() || instance.busy || instance.sessions >= MAX_SESSIONS {
            return;
        }
        let now = Instant::now();
        self.trim_idle(now);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                instance,
                since: now,
            });
        }
    }

    /// Lets go of the instances idle longer than [`MAX_IDLE_TIME`] at `now`.
    fn trim_idle(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest are first.
        let stale = idle.partition_point(|i| now.duration_since(i.since) > MAX_IDLE_TIME);
        let stale: Vec<Idle> = idle.drain(..stale).collect();
        // Dropped after the lock is let go: tearing a store down takes a while.
        drop(idle);
        drop(stale);
    }

    /// Logs what the module wrote to stdout and stderr, within its budget, tagged with
    /// the session and the hook it wrote at (none: as the session ended); `ended`: the
    /// instance is gone, so an unfinished last line is logged too.
    fn log_output(
        &self,
        streams: [&CapturedOutput; 2],
        facts: &SessionFacts,
        hook: Option<Hook>,
        ended: bool,
    ) {
        let [stdout, stderr] = streams;
        let (peer, session) = (facts.peer.ip(), facts.session);
        let queue_id = facts.queue_id.as_deref().unwrap_or("-");
        let hook = hook.map_or("end", Hook::as_str);
        for (stream, output) in [("stdout", stdout), ("stderr", stderr)] {
            let (lines, dropped_bytes) = output.take_lines(ended);
            if lines.is_empty() && dropped_bytes == 0 {
                continue;
            }
            let module = &*self.name;
            let allowed = self.output_budget.take(lines.len(), Instant::now());
            if allowed.dropped_before > 0 {
                tracing::warn!(
                    module,
                    stream,
                    lines = allowed.dropped_before,
                    "module output dropped: over {} lines a second",
                    super::output::LINES_PER_SECOND
                );
            }
            for line in &lines[..allowed.lines] {
                // What a module writes to stderr is its errors (a Python traceback, a Rust
                // panic): shown where warnings are, `sluice policy test` included.
                if stream == "stderr" {
                    tracing::warn!(module, stream, hook, session, %peer, queue_id, "{line}");
                } else {
                    tracing::info!(module, stream, hook, session, %peer, queue_id, "{line}");
                }
            }
            if dropped_bytes > 0 {
                tracing::warn!(
                    module,
                    stream,
                    bytes = dropped_bytes,
                    "module output dropped: more than {} bytes in one call",
                    super::output::MAX_PENDING
                );
            }
        }
    }
}

/// Host resources (pollables, streams, the message body) one instance may hold at once:
/// they live in the host's memory, outside the module's `max_memory`, and a policy needs a
/// handful.
const MAX_RESOURCES: usize = 1_000;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// Elements of a module's tables at most: far more than any policy needs, far less than
/// what would let a module exhaust the host's memory through tables.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Entries of a session's policy trace kept at most.
const MAX_TRACE: usize = 2000;

/// A module instance, serving one session at a time.
struct Instance {
    store: Store<HostState>,
    /// The component instance, for the exports the bindings do not cover.
    handle: wasmtime::component::Instance,
    bindings: Policy,
    /// The module's `lifecycle.reset`, if it may be reused.
    reset: Option<TypedFunc<(), ()>>,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
    /// Sessions it has served, this one included.
    sessions: u32,
    /// In a call: a session dropped while it is set left the module half-way through
    /// its code, in no state to serve another session.
    busy: bool,
}

/// Where one module stands in one session.
enum Slot {
    /// None of its hooks has been called yet.
    NotStarted,
    Running(Box<Instance>),
    /// It failed (trapped, ran past its time, could not start): it is not entered again
    /// in this session, since after a trap its instance may be in any state.
    Failed,
}

/// One session's instances of the chain. A module that failed is left out for the rest
/// of the session, and its `on_error` decides at every later hook.
pub struct SessionChain {
    chain: Arc<Chain>,
    slots: Vec<Slot>,
    facts: Arc<SessionFacts>,
    /// What each module decided, since the session began or the last transaction ended.
    trace: Vec<Decided>,
    /// What the modules asked of the delivery of the current transaction.
    requests: Arc<DeliveryRequests>,
}

/// A hook and what it is called with.
enum HookCall<'a> {
    Connect,
    Helo(&'a str),
    MailFrom(&'a str, &'a [(String, Option<String>)]),
    Rcpt(&'a str, &'a [(String, Option<String>)]),
    Data(&'a [types::Header], &'a Arc<MessageData>),
}

impl HookCall<'_> {
    fn hook(&self) -> Hook {
        match self {
            HookCall::Connect => Hook::Connect,
            HookCall::Helo(_) => Hook::Helo,
            HookCall::MailFrom(..) => Hook::MailFrom,
            HookCall::Rcpt(..) => Hook::Rcpt,
            HookCall::Data(..) => Hook::Data,
        }
    }

    /// What the hook is about, for the trace: the HELO name, the sender or the recipient.
    fn subject(&self) -> Option<&str> {
        match self {
            HookCall::Helo(s) | HookCall::MailFrom(s, _) | HookCall::Rcpt(s, _) => Some(s),
            HookCall::Connect | HookCall::Data(..) => None,
        }
    }

    /// Calls the hook on one instance.
    async fn call(&self, instance: &mut Instance) -> wasmtime::Result<types::Decision> {
        let hooks = instance.bindings.sluice_policy_hooks();
        let store = &mut instance.store;
        match *self {
            HookCall::Connect => hooks.call_on_connect(store).await,
            HookCall::Helo(name) => hooks.call_on_helo(store, name).await,
            HookCall::MailFrom(sender, params) => {
                hooks.call_on_mail_from(store, sender, params).await
            }
            HookCall::Rcpt(recipient, params) => hooks.call_on_rcpt(store, recipient, params).await,
            HookCall::Data(headers, message) => {
                let body: Resource<MessageBody> =
                    store.data_mut().table.push(MessageBody(message.clone()))?;
                let rep = body.rep();
                let result = hooks.call_on_data(&mut *store, headers, body).await;
                // The module only borrowed the body; take it back whatever happened.
                let _ = store
                    .data_mut()
                    .table
                    .delete::<MessageBody>(Resource::new_own(rep));
                result
            }
        }
    }
}

impl SessionChain {
    /// What the modules see of the session now.
    pub fn facts(&self) -> &SessionFacts {
        &self.facts
    }

    /// Replaces the facts every module sees from now on.
    pub fn set_facts(&mut self, facts: &Arc<SessionFacts>) {
        self.facts = facts.clone();
        for slot in &mut self.slots {
            if let Slot::Running(instance) = slot {
                instance.store.data_mut().facts = facts.clone();
            }
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
    pub async fn on_connect(&mut self) -> ChainDecision {
        self.run(HookCall::Connect).await
    }

    /// HELO or EHLO.
    pub async fn on_helo(&mut self, name: &str) -> ChainDecision {
        // A new EHLO replaces what the last one decided.
        self.trace.retain(|d| d.hook == Hook::Connect);
        self.run(HookCall::Helo(name)).await
    }

    /// MAIL FROM.
    pub async fn on_mail_from(
        &mut self,
        sender: &str,
        params: &[(String, Option<String>)],
    ) -> ChainDecision {
        self.run(HookCall::MailFrom(sender, params)).await
    }

    /// RCPT TO.
    pub async fn on_rcpt(
        &mut self,
        recipient: &str,
        params: &[(String, Option<String>)],
    ) -> ChainDecision {
        self.run(HookCall::Rcpt(recipient, params)).await
    }

    /// Is any module of the chain called at `hook`?
    pub fn calls(&self, hook: Hook) -> bool {
        self.chain.modules.iter().any(|m| m.hooks.contains(hook))
    }

    /// The end of DATA: the header fields and the message as received.
    pub async fn on_data(
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
        self.run(HookCall::Data(&headers, message)).await
    }

    /// Asks one module, instantiating it first if this is its first hook in the session.
    /// Whatever happens, what it printed is logged; if it failed, it is out for the rest
    /// of the session.
    async fn ask(
        &mut self,
        index: usize,
        call: &HookCall<'_>,
        started: Instant,
    ) -> Result<(Verdict, Option<Reply>, Vec<Rewrite>), Failure> {
        let module = &self.chain.modules[index];
        let slot = &mut self.slots[index];
        let mut deadline = started + module.timeout;
        if let Slot::NotStarted = slot {
            let engine = &self.chain.engine;
            let mut started = module.start(engine, &self.facts, &self.requests).await;
            // Instances kept for later sessions must not crowd out this one.
            if matches!(started, Err(Failure::Capacity(_))) && self.chain.release_idle() {
                started = module.start(engine, &self.facts, &self.requests).await;
            }
            *slot = match started {
                Ok(instance) => {
                    // Starting had its own time limit; the call gets all of its own.
                    deadline = Instant::now() + module.timeout;
                    Slot::Running(instance)
                }
                // Out of capacity, it is tried again at the next hook.
                Err(failure @ Failure::Capacity(_)) => return Err(failure),
                Err(failure) => {
                    *slot = Slot::Failed;
                    return Err(failure);
                }
            };
        }
        let Slot::Running(instance) = slot else {
            return Err(Failure::FailedEarlier);
        };
        // The next yield a tick from now: the deadline left from the last call has passed
        // while the client was talking, and would make every call begin with a needless
        // trip through the scheduler.
        instance.store.set_epoch_deadline(1);
        instance.busy = true;
        let outcome = within(deadline, call.call(instance)).await;
        instance.busy = false;
        let outcome = match outcome {
            Some(result) => result
                .map_err(|e| failure(&e, instance.store.data().limits.refused))
                .and_then(|d| check_decision(d).map_err(Failure::Broken)),
            // The call was dropped where it stood: in the module's code or in a host call.
            None => Err(Failure::Timeout(module.timeout)),
        };
        let streams = [&instance.stdout, &instance.stderr];
        module.log_output(streams, &self.facts, Some(call.hook()), outcome.is_err());
        // A call that found no fiber stack never entered the module: it is still whole.
        if outcome.is_err() && !matches!(outcome, Err(Failure::Capacity(_))) {
            *slot = Slot::Failed;
        }
        outcome
    }

    /// Runs the chain at one hook: each module in order until one ends it.
    async fn run(&mut self, call: HookCall<'_>) -> ChainDecision {
        let mut rewrites = Vec::new();
        for index in 0..self.chain.modules.len() {
            if !self.chain.modules[index].hooks.contains(call.hook()) {
                continue;
            }
            let started = Instant::now();
            let outcome = self.ask(index, &call, started).await;
            let module = &self.chain.modules[index];
            let queue_id = self.facts.queue_id.as_deref().unwrap_or("-");
            let settled = module.settle(&call, outcome, started.elapsed(), queue_id);
            if let Some(observer) = &self.chain.observer {
                observer(&settled.decided);
            }
            note(&mut self.trace, settled.decided);
            rewrites.extend(settled.rewrites);
            if let Some((verdict, reply)) = settled.ends {
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

/// The session ended: what its modules printed without a line end yet is logged, and
/// their instances are kept for later sessions where they may be.
impl Drop for SessionChain {
    fn drop(&mut self) {
        for (module, slot) in self.chain.modules.iter().zip(&mut self.slots) {
            if let Slot::Running(instance) = std::mem::replace(slot, Slot::NotStarted) {
                let streams = [&instance.stdout, &instance.stderr];
                module.log_output(streams, &self.facts, None, true);
                if !self.chain.retired.load(Ordering::Relaxed) {
                    module.keep(instance);
                }
            }
        }
    }
}

/// What one module's answer means for the chain at one hook.
struct Settled {
    /// Its line in the session's trace.
    decided: Decided,
    /// The rewrites it adds to the chain's.
    rewrites: Vec<Rewrite>,
    /// The verdict and reply that end the chain here, if it ends here.
    ends: Option<(Verdict, Option<Reply>)>,
}

impl LoadedModule {
    /// Counts and logs one module's answer (or failure) and says what it means for the
    /// chain: a failure under `on_error = "tempfail"` ends it with 451, a dry-run module
    /// never changes it, and anything but `continue` ends it.
    fn settle(
        &self,
        call: &HookCall<'_>,
        outcome: Result<(Verdict, Option<Reply>, Vec<Rewrite>), Failure>,
        elapsed: Duration,
        queue_id: &str,
    ) -> Settled {
        let (hook, name) = (call.hook(), &*self.name);
        self.stats
            .record(outcome.as_ref().map(|(v, _, _)| *v), elapsed);
        let m = crate::metrics::metrics();
        match &outcome {
            Ok((verdict, _, _)) => m.decision(&self.name, hook.as_str(), verdict.as_str(), elapsed),
            Err(failure) => {
                m.decision(&self.name, hook.as_str(), "error", elapsed);
                m.module_failure(&self.name, failure.kind());
            }
        }
        let mut decided = Decided {
            hook,
            subject: call.subject().map(str::to_string),
            module: self.name.clone(),
            outcome: Ok(Verdict::Continue),
            reply: None,
            rewrites: Vec::new(),
            elapsed,
            dry_run: false,
        };
        let (verdict, reply, rewrites) = match outcome {
            Ok(decision) => decision,
            Err(failure @ (Failure::Capacity(_) | Failure::Counters(_))) => {
                // Running out, or counters that cannot count, are the relay's failure: the
                // client is told to come back, whatever `on_error` and the mode say, so a
                // fail-open limit still limits.
                tracing::error!(
                    module = name,
                    hook = hook.as_str(),
                    queue_id,
                    "policy module not decided, the relay could not run it (out of capacity, or counters unavailable): {failure}"
                );
                decided.outcome = Err(failure.to_string());
                decided.reply = Some(match hook {
                    Hook::Connect => Reply::new(421, "4.3.2", "System busy, try again later"),
                    _ => Reply::new(451, "4.3.2", "System busy, try again later"),
                });
                let ends = Some((Verdict::Tempfail, decided.reply.clone()));
                return Settled {
                    decided,
                    rewrites: Vec::new(),
                    ends,
                };
            }
            Err(failure) => {
                // A module that cannot even start is the deployment's problem: an error.
                if matches!(failure, Failure::Start(_)) {
                    tracing::error!(module = name, hook = hook.as_str(), queue_id, on_error = ?self.on_error, "policy module failed: {failure}");
                } else {
                    tracing::warn!(module = name, hook = hook.as_str(), queue_id, on_error = ?self.on_error, "policy module failed: {failure}");
                }
                // A module on trial (dry-run) decides nothing, not even by failing.
                decided.dry_run = self.mode == Mode::DryRun;
                let tempfail = self.on_error == OnError::Tempfail && !decided.dry_run;
                decided.outcome = Err(failure.to_string());
                decided.reply = tempfail
                    .then(|| Reply::new(451, "4.3.0", "Temporary policy failure, try again later"));
                let ends = tempfail.then(|| (Verdict::Tempfail, decided.reply.clone()));
                return Settled {
                    decided,
                    rewrites: Vec::new(),
                    ends,
                };
            }
        };
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
        decided.outcome = Ok(verdict);
        decided.reply = reply.clone();
        decided.rewrites = rewrites.clone();
        decided.dry_run = self.mode == Mode::DryRun;
        let hook = hook.as_str();
        if decided.dry_run {
            if verdict != Verdict::Continue || !rewrites.is_empty() {
                tracing::info!(queue_id, "dry-run: would have decided: {hook} {decided}");
            }
            return Settled {
                decided,
                rewrites: Vec::new(),
                ends: None,
            };
        }
        if matches!(verdict, Verdict::Continue | Verdict::Accept) {
            tracing::debug!(queue_id, "policy decision: {hook} {decided}");
        } else {
            tracing::info!(queue_id, "policy decision: {hook} {decided}");
        }
        Settled {
            decided,
            rewrites,
            ends: (verdict != Verdict::Continue).then_some((verdict, reply)),
        }
    }
}

/// Runs `call` until `deadline`; `None` when the time ran out first, and the call was
/// dropped where it stood. Unlike `tokio::time::timeout`, the timer is set only once the
/// call has had to wait: most hook calls finish at their first poll, in well under a
/// microsecond, and a timer for each would cost as much as the call itself.
async fn within<T>(deadline: Instant, call: impl Future<Output = T>) -> Option<T> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut call = std::pin::pin!(call);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Adds a line to a session's trace, within its bound.
fn note(trace: &mut Vec<Decided>, decided: Decided) {
    if trace.len() < MAX_TRACE {
        trace.push(decided);
    }
}

/// What a failed call's error means. (An epoch interrupt cannot happen: the stores yield
/// at their deadline instead, and the time limit is kept by [`within`].)
/// `out_of_memory`: the store refused the module memory it asked for.
fn failure(error: &wasmtime::Error, out_of_memory: bool) -> Failure {
    if out_of_capacity(error) {
        return Failure::Capacity(error.to_string());
    }
    if let Some(unavailable) = error.downcast_ref::<super::counters::Unavailable>() {
        return Failure::Counters(unavailable.to_string());
    }
    if out_of_memory {
        return Failure::OutOfMemory(format!("out of memory: {}", error.root_cause()));
    }
    match error.downcast_ref::<Trap>() {
        Some(trap) => Failure::Trapped(format!("trapped: {trap}")),
        // The root cause only: the rest is a multi-line wasm backtrace, not for a log line.
        None => Failure::Trapped(format!("failed: {}", error.root_cause())),
    }
}

/// Did the instance pool (instances, memories, tables or fiber stacks) run out?
fn out_of_capacity(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
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
                Verdict::Reject => ReplyClass::Permanent,
                Verdict::Tempfail => ReplyClass::Transient,
                _ => ReplyClass::Positive,
            };
            // The rule the SDK's test session applies too (one definition, in the mail crate).
            sluice_mail::reply::check(class, r.code, &r.enhanced)
                .map_err(|e| format!("{verdict:?}: {e}"))?;
            Some(Reply::new(
                r.code,
                &r.enhanced,
                sluice_mail::reply::clean_text(&r.text),
            ))
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

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
