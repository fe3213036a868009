//! `sluice serve`: starts the policy engine, the spool and its runner, and the listeners.

use crate::config::Config;
use crate::delivery::Delivery;
use crate::policy::{Chain, PolicyEngine};
use crate::queue::{Queue, Spool, runner};
use crate::smtp::{ServerContext, listener};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Runs the relay until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);

    let engine = PolicyEngine::new().context("starting the policy engine")?;
    let policies_dir = config.policies.dir.clone();
    let chain = {
        let engine = engine.clone();
        let dir = policies_dir.clone();
        tokio::task::spawn_blocking(move || Chain::load(&engine, &dir)).await?
    }
    .map_err(|e| anyhow::anyhow!("policies: {e}"))?;
    tracing::info!(dir = %policies_dir.display(), chain = ?chain.names(), "policy chain loaded");

    let spool = Arc::new(
        Spool::open(&config.spool.dir)
            .with_context(|| format!("spool.dir {}", config.spool.dir.display()))?,
    );
    let (new_messages, runner_rx) = mpsc::unbounded_channel();
    let delivery = Arc::new(Delivery::new(
        spool.clone(),
        config.delivery.clone(),
        config.hostname.clone(),
    )?);
    tokio::spawn(runner::run(
        spool.clone(),
        delivery,
        runner_rx,
        config.delivery.concurrency,
    ));

    let tls = crate::tls::acceptor(&config.tls, &config.hostname)?;
    let listeners = listener::bind(&config.listeners).await?;
    let ctx = Arc::new(ServerContext {
        config: config.clone(),
        tls,
        chain: ArcSwap::from_pointee(chain),
        queue: Queue::new(spool, new_messages),
    });

    tokio::spawn(reload_on_sighup(ctx.clone(), engine));
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = listener::serve(ctx, listeners) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    // Accepted messages are on disk already; the next start delivers what is left.
    Ok(())
}

/// SIGHUP reloads the policy chain: built off the request path, swapped in whole. Sessions
/// already open keep the chain they started with; a chain that fails to load changes nothing.
async fn reload_on_sighup(ctx: Arc<ServerContext>, engine: PolicyEngine) {
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by restart only");
        return;
    };
    while hangup.recv().await.is_some() {
        let dir = ctx.config.policies.dir.clone();
        let engine = engine.clone();
        match tokio::task::spawn_blocking(move || Chain::load(&engine, &dir)).await {
            Ok(Ok(chain)) => {
                tracing::info!(chain = ?chain.names(), "SIGHUP: policy chain reloaded");
                ctx.chain.store(Arc::new(chain));
            }
            Ok(Err(e)) => {
                tracing::error!("SIGHUP: policy chain not reloaded, the running one stays: {e}")
            }
            Err(e) => tracing::error!("SIGHUP: reload task failed: {e}"),
        }
    }
}
