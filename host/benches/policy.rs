//! The policy runtime's costs, on a chain of five modules (the built-in `networks`, five
//! times): one hook call through the chain, and setting up one session's instances.
//!
//!     cargo bench -p sluice --bench policy
//!
//! Timed with `std::time::Instant` over many iterations, best of several rounds (as
//! criterion's estimate would be, without its build cost in every `cargo test`).

use sluice::policy::manifest::{Mode, ModuleSource, OnError, PolicySpec};
use sluice::policy::{Chain, PolicyEngine, SessionFacts};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODULES: usize = 5;
const ROUNDS: usize = 7;

fn main() {
    let engine = PolicyEngine::new().expect("the policy engine");
    let specs = (0..MODULES)
        .map(|i| PolicySpec {
            name: format!("networks-{i}"),
            source: ModuleSource::Builtin("networks".into()),
            mode: Mode::Enforce,
            on_error: OnError::Tempfail,
            timeout: Duration::from_millis(50),
            max_memory: 32 << 20,
            config: BTreeMap::new(),
        })
        .collect();
    let chain = Arc::new(Chain::from_specs(&engine, specs).expect("the chain"));
    let facts = Arc::new(SessionFacts::new(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
        "bench",
    ));

    let setup = best(2_000, || {
        black_box(chain.start_session(facts.clone()));
    });
    let mut session = chain.start_session(facts.clone());
    let hook = best(200_000, || {
        black_box(session.on_helo("app.example.edu"));
    });
    println!("chain of {MODULES} modules");
    println!(
        "session setup: {:>8.0} ns per session, {:>6.0} ns per module",
        setup,
        setup / MODULES as f64
    );
    println!(
        "hook call:     {:>8.0} ns per call,    {:>6.0} ns per module",
        hook,
        hook / MODULES as f64
    );
}

/// The best per-iteration time in nanoseconds over [`ROUNDS`] rounds of `n` iterations.
fn best(n: u32, mut f: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}
