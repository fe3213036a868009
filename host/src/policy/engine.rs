//! The one wasmtime engine of the relay: compiling policy components and linking them
//! against what the host lends a module.
//!
//! The runtime is async (wasmtime's fibers): a hook call is a future the session awaits,
//! so a module that computes for long yields the worker at every epoch tick (a thread
//! ticks the epoch), and one that waits in a host call (a WASI clock, a counter) blocks
//! nothing. The time limit of a call is a deadline on that future, kept by the chain
//! (see `chain.rs`); memory is bounded by a store limiter, and the pooling allocator gives
//! a session's instances pre-reserved slots instead of fresh mappings.

use super::cache::{CacheError, ModuleCache};
use super::counters::Counters;
use super::error::{EngineError, ModuleError};
use super::host::HostState;
use super::manifest::MAX_POLICIES;
use crate::registry::Table;
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, ComponentExportIndex, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The contract this relay speaks (see wit/policy.wit).
pub const CONTRACT_PACKAGE: &str = "sluice:policy";
/// The contract version this relay was built against.
pub const CONTRACT_VERSION: (u64, u64, u64) = (0, 1, 1);
/// How often the epoch advances; a hook's time limit is counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    with: {
        "sluice:policy/message.body": super::message::MessageBody,
    },
    // Every hook is awaited; counters are the import that may wait (on Redis, shared by
    // the nodes), so they are async on the host, and may fail the call when they cannot
    // count. The rest answer from memory.
    imports: { "sluice:policy/counters": async | trappable },
    exports: { default: async },
});

/// The compiled-code engine and the linker with the host's imports, shared by every chain.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// The node's counters: kept across reloads, as chains come and go.
    counters: Arc<Counters>,
    /// The relay registry modules look addresses up in (empty until the relay sets it).
    registry: Arc<ArcSwap<Table>>,
    /// Compiled components by the SHA-256 of their bytes, so that a reload recompiles only
    /// the modules that changed.
    compiled: Arc<Mutex<HashMap<String, Component>>>,
    /// Where compiled components are kept across restarts; `None`: in memory only.
    cache: Option<Arc<ModuleCache>>,
}

impl PolicyEngine {
    /// Builds the engine, with an instance pool for `sessions` sessions running a full
    /// chain at once (as far as [`instance_capacity`] allows), and starts the epoch ticker
    /// thread.
    pub fn new(sessions: usize) -> Result<Self, EngineError> {
        let engine = match Engine::new(&engine_config(Some(instance_capacity(sessions)))) {
            Ok(engine) => engine,
            Err(e) => {
                // The pooling allocator reserves address space up front; where that is refused
                // (a small ulimit -v), on-demand allocation still works, only slower.
                tracing::warn!(error = %e, "pooling allocator unavailable, allocating instances on demand");
                Engine::new(&engine_config(None)).map_err(EngineError::Config)?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::Link)?;
        Policy::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(EngineError::Link)?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            counters: Arc::default(),
            registry: Arc::default(),
            compiled: Arc::default(),
            cache: None,
        })
    }

    /// Counts in `counters` (`[counters]`: memory, or Redis shared by the nodes).
    pub fn with_counters(mut self, counters: Counters) -> Self {
        self.counters = Arc::new(counters);
        self
    }

    /// Lets modules look addresses up in `table` (the running relay's registry).
    pub fn with_registry(mut self, table: Arc<ArcSwap<Table>>) -> Self {
        self.registry = table;
        self
    }

    /// The registry modules' `registry.lookup` consults.
    pub fn registry(&self) -> &Arc<ArcSwap<Table>> {
        &self.registry
    }

    /// Keeps compiled modules in `dir` too, so a restart does not compile unchanged modules
    /// again. What is in it is loaded as machine code, so it is used only while it is the
    /// relay's alone (see [`ModuleCache`]): one that is not is refused, or emptied.
    pub fn with_cache_dir(mut self, dir: &Path) -> Result<Self, CacheError> {
        self.cache = Some(Arc::new(ModuleCache::open(dir)?));
        Ok(self)
    }

    /// Forgets compiled modules other than `keep` (the running chain's), in memory and on
    /// disk, so the cache holds what is running and no more.
    pub fn retain_compiled(&self, keep: &HashSet<String>) {
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|hash, _| keep.contains(hash));
        if let Some(cache) = &self.cache {
            cache.retain(keep);
        }
    }

    /// The component for `bytes`: from memory, from the cache directory, or compiled (and
    /// then kept in both). The flag says whether it came from a cache.
    fn component(&self, bytes: &[u8], hash: &str) -> Result<(Component, bool), ModuleError> {
        let memory = || self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(component) = memory().get(hash) {
            return Ok((component.clone(), true));
        }
        let cache = self.cache.as_deref();
        if let Some(code) = cache.and_then(|c| c.load(hash)) {
            // SAFETY: the cache gave these bytes only from a file that nobody but the
            // relay's user can have written (checked on the open file, the directory
            // likewise; see `ModuleCache`), which holds what `Component::serialize` wrote
            // below under the hash of the module it came from; wasmtime refuses one made by
            // another version or configuration. Read into memory rather than mapped, so a
            // change to the file afterwards cannot change code that runs.
            match unsafe { Component::deserialize(&self.engine, &code) } {
                Ok(component) => {
                    memory().insert(hash.to_string(), component.clone());
                    return Ok((component, true));
                }
                Err(e) => {
                    tracing::info!(hash, error = %e, "compiled-module cache entry not usable; compiling");
                    if let Some(cache) = cache {
                        cache.remove(hash);
                    }
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(ModuleError::Compile)?;
        if let (Some(cache), Ok(code)) = (cache, component.serialize())
            && let Err(e) = cache.store(hash, &code)
        {
            tracing::warn!(hash, error = %e, "cannot keep a compiled module");
        }
        memory().insert(hash.to_string(), component.clone());
        Ok((component, false))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The counters every module's `counters` import counts in.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Compiles a component, checks that it is a policy for this contract version and
    /// pre-links it, so that instantiating it for a session does no compiling or linking;
    /// and tells what the module is (`sluice policy check`).
    pub fn inspect(&self, bytes: &[u8]) -> Result<(PolicyPre<HostState>, ModuleInfo), ModuleError> {
        // A core module (version 1) where a component (layer 1) is needed: the commonest
        // mistake (wasm32-wasip1, or a plain `cargo build --target wasm32-unknown-unknown`),
        // answered with the fix rather than the compiler's complaint.
        if bytes.starts_with(b"\0asm\x01\x00\x00\x00") {
            return Err(ModuleError::CoreModule);
        }
        let sha256 = content_hash(bytes);
        let started = Instant::now();
        let (component, cached) = self.component(bytes, &sha256)?;
        let compile_time = started.elapsed();
        let hooks_name = check_contract(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(ModuleError::Link)?;
        let pre = PolicyPre::new(pre).map_err(ModuleError::Hooks)?;
        let ty = component.component_type();
        let hooks = ty
            .exports(&self.engine)
            .find(|(name, _)| *name == hooks_name)
            .map(|(_, item)| match item.ty {
                ComponentItem::ComponentInstance(instance) => instance
                    .exports(&self.engine)
                    .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                    .map(|(name, _)| name.to_string())
                    .collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        let info = ModuleInfo {
            // One instance may serve one session after another.
            reset: optional_export(&component, &hooks_name, "lifecycle", "reset"),
            // The module checks its configuration at load.
            validate: optional_export(&component, &hooks_name, "validation", "validate-config"),
            // It says which hooks it acts at.
            declared_hooks: optional_export(&component, &hooks_name, "declared-hooks", "hooks"),
            contract: hooks_name
                .split_once('@')
                .map(|(_, v)| format!("{CONTRACT_PACKAGE}@{v}"))
                .unwrap_or_default(),
            hooks,
            imports: ty
                .imports(&self.engine)
                .map(|(name, _)| name.to_string())
                .collect(),
            size: bytes.len(),
            compile_time,
            cached,
            sha256,
        };
        Ok((pre, info))
    }
}

/// A function of one of the contract's optional interfaces (`lifecycle.reset`,
/// `validation.validate-config`), of the same contract version as the module's hooks, if
/// the module exports it.
fn optional_export(
    component: &Component,
    hooks_name: &str,
    interface: &str,
    function: &str,
) -> Option<ComponentExportIndex> {
    let interface = hooks_name.replacen("/hooks", &format!("/{interface}"), 1);
    let interface = component.get_export_index(None, &interface)?;
    component.get_export_index(Some(&interface), function)
}

/// What a module is, as `sluice policy check` reports it.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// Its `lifecycle.reset` export, if it has one: its instances may then be reused.
    pub reset: Option<ComponentExportIndex>,
    /// Its `validation.validate-config` export, if it has one: it checks its configuration.
    pub validate: Option<ComponentExportIndex>,
    /// Its `declared-hooks.hooks` export, if it has one: it says which hooks it acts at.
    pub declared_hooks: Option<ComponentExportIndex>,
    /// The contract it was built for, such as `sluice:policy@0.1.1`.
    pub contract: String,
    /// The hook functions it exports.
    pub hooks: Vec<String>,
    /// The interfaces it imports (the relay's and WASI's, with nothing granted).
    pub imports: Vec<String>,
    /// Size of the component in bytes.
    pub size: usize,
    /// Time to compile it to machine code (or to take it from the cache).
    pub compile_time: Duration,
    /// Whether it came compiled from the cache.
    pub cached: bool,
    /// SHA-256 of the module's bytes, in hex: its identity in status and the cache.
    pub sha256: String,
}

/// SHA-256 of `bytes` in lower-case hex.
pub fn content_hash(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Memory mappings one pooled instance may cost the process: its fiber stack's slot and
/// guard page (made for every slot when the pool is built), and, while it lives, its linear
/// memory's accessible part and copy-on-write image, and its tables (measured: about 4).
const MAPPINGS_PER_INSTANCE: usize = 6;

/// How many instances the pool holds for `sessions` sessions: one per module of a chain
/// of [`MAX_POLICIES`] in every session, so that a relay at `limits.max_connections`
/// never runs out; but no more than half of the kernel's limit on a process's memory
/// mappings (`vm.max_map_count`) allows, since a pool past it would leave the process
/// unable to map anything else (threads, files). Out of instances, a chain fails closed
/// (see `chain.rs`); `sluice check-config` says when a chain cannot fit.
pub fn instance_capacity(sessions: usize) -> usize {
    let wanted = sessions.saturating_mul(MAX_POLICIES);
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(65530);
    wanted
        .min(max_map_count / 2 / MAPPINGS_PER_INSTANCE)
        .max(MAX_POLICIES)
}

/// What to tell the postmaster when `sessions` sessions of a chain of `modules` modules
/// cannot all be served at once by the pool [`instance_capacity`] gives; `None` when
/// they can.
pub fn capacity_shortfall(modules: usize, sessions: usize) -> Option<String> {
    let capacity = instance_capacity(sessions);
    let wanted = modules.saturating_mul(sessions);
    (wanted > capacity).then(|| {
        format!(
            "the instance pool holds {capacity} module instances, and {sessions} sessions \
             (limits.max_connections) of this chain of {modules} modules need {wanted}: \
             past {} sessions at once, clients are told to try again later (421/451 4.3.2). \
             Lower limits.max_connections, shorten the chain, or raise the kernel's \
             vm.max_map_count (sysctl), of which the pool takes at most half",
            capacity / modules.max(1)
        )
    })
}

/// Bytes of written pages an instance's memory or table slot keeps for the next instance.
const KEEP_RESIDENT: usize = 256 << 10;

/// Does the kernel have the PAGEMAP_SCAN ioctl (Linux 6.7 and later)?
fn has_pagemap_scan() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    cfg!(target_os = "linux") && (major, minor) >= (6, 7)
}

/// The engine's configuration; `pool_instances`: pre-reserve slots for this many
/// instances. Slots are address space, not memory, until used.
fn engine_config(pool_instances: Option<usize>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // For `perf report` to name the modules' functions (README: "Profiling modules").
    if std::env::var_os("SLUICE_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(instances) = pool_instances {
        let instances = u32::try_from(instances).unwrap_or(u32::MAX);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances)
            .total_tables(instances.saturating_mul(2))
            .max_memory_size(256 << 20)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            // A session's instances are short-lived: returning their slots in batches costs
            // less than a madvise per slot each time (measured: 10 µs → 7 µs per module).
            .decommit_batch_size(32)
            // Hook calls run on fiber stacks, and each store keeps the one it last used
            // for as long as it lives: one stack per live instance.
            .total_stacks(instances);
        if has_pagemap_scan() {
            // A slot keeps the pages an instance wrote, reset to the module's image in
            // place (the written pages found with PAGEMAP_SCAN), instead of giving them
            // back: the next instance then takes no page fault on them, and no
            // copy-on-write fault with the TLB shootdown it sends to every core running
            // the relay. Without PAGEMAP_SCAN, wasmtime would instead reset the lowest
            // bytes of every slot whether written or not, and a Rust module's lowest
            // bytes are its unused stack.
            pool.linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT)
                .pagemap_scan(wasmtime::Enabled::Auto);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // 256 MiB reserved per memory slot (no guard region beyond it): bounds checks are
        // explicit, and thousands of slots fit in the address space.
        config.memory_reservation(256 << 20);
        config.memory_guard_size(64 << 10);
    }
    config
}

/// Refuses a component built for another major version of the contract (for 0.x, another
/// minor version), or one that does not export the hooks at all, with a message that says so.
fn check_contract(engine: &Engine, component: &Component) -> Result<String, ModuleError> {
    let ty = component.component_type();
    let hooks = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .find(|name| name.starts_with(&format!("{CONTRACT_PACKAGE}/hooks")));
    let (want_major, want_minor, _) = CONTRACT_VERSION;
    let want = format!("{want_major}.{want_minor}.x");
    let Some(name) = hooks else {
        return Err(ModuleError::NotAPolicy {
            package: CONTRACT_PACKAGE,
            speaks: want,
        });
    };
    let version = name.split_once('@').map(|(_, v)| v).unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    let compatible = match (major, minor) {
        (Some(0), Some(minor)) => want_major == 0 && minor == want_minor,
        (Some(major), Some(_)) => major == want_major,
        _ => false,
    };
    if compatible {
        Ok(name)
    } else {
        Err(ModuleError::Contract {
            package: CONTRACT_PACKAGE,
            built_for: version.to_string(),
            speaks: want,
        })
    }
}
