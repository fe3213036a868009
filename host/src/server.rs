//! `sluice serve`: starts the policy engine, the spool and its runner, and the listeners.

use crate::admin;
use crate::auth::Auth;
use crate::config::Config;
use crate::delivery::{CurrentDelivery, Delivery};
use crate::dkim::Dkim;
use crate::metrics;
use crate::policy::engine::capacity_shortfall;
use crate::policy::reload::{self, Reloader};
use crate::policy::{Chain, PolicyEngine};
use crate::queue::{Queue, Schedule, Spool, runner};
use crate::registry::Registry;
use crate::reloadable::Reloadable;
use crate::smtp::{ServerContext, listener};
use crate::store::Location;
use crate::systemd;
use crate::tls::Certificates;
use crate::web;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Runs the relay until SIGINT or SIGTERM. `config_path` is where `config` came from (as
/// given with `--config`), read again by `sluice reload` for the `[dkim]` section.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);

    // The spool first: its lock keeps a second relay on the same spool from going further
    // (cleaning up files, taking the control socket, delivering).
    let spool = Arc::new(
        Spool::open(&config.spool.dir)
            .with_context(|| format!("spool.dir {}", config.spool.dir.display()))?
            .syncing(config.spool.sync),
    );
    // Signs what enters the queue: what the relay accepts, and what it writes itself
    // (bounces, registry notices).
    let dkim = Arc::new(Dkim::new(config.dkim.as_ref())?);
    let registry = Arc::new(
        Registry::open(&config).with_context(|| format!("store {}", Location::of(&config)))?,
    );
    let auth =
        Arc::new(Auth::open(&config).with_context(|| format!("store {}", Location::of(&config)))?);
    let (chain, reloader) = start_policies(&config, &registry).await?;
    let admin = admin::bind(&config.admin_socket())?;
    // Watching starts before the relay listens, so no change made after that is missed.
    let watching = config
        .policies
        .watch
        .then(|| reload::watch(reloader.clone(), config.policies.settle))
        .flatten();
    let certificates = Certificates::load(&config.tls, &config.hostname)?;
    let tls = crate::tls::acceptor(certificates.clone())?;
    let listeners = listener::bind(&config.listeners).await?;
    let metrics_listener = match config.metrics.addr {
        Some(addr) => Some(metrics::http::bind(addr).await?),
        None => None,
    };
    let web_listener = match config.web.addr {
        Some(addr) => Some(web::bind(addr).await?),
        None => None,
    };

    // The queue runner drives delivery's SMTP client; the queue knows it only as a
    // `Deliver`.
    let (orders, runner_orders) = mpsc::unbounded_channel();
    let queue = Queue::new(spool, orders, dkim.clone());
    let delivery = Arc::new(CurrentDelivery::new(Delivery::new(
        config.delivery.clone(),
        config.hostname.clone(),
    )?));
    tokio::spawn(runner::run(
        queue.clone(),
        delivery.clone(),
        runner_orders,
        Schedule::of(&config),
    ));

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running_config = Arc::new(ArcSwap::new(config.clone()));
    let reloadable = Arc::new(Reloadable {
        config_path,
        config: running_config.clone(),
        dkim: dkim.clone(),
        certificates,
        delivery,
        queue: queue.clone(),
        auth: auth.clone(),
        registry: registry.clone(),
        failed: Default::default(),
    });
    let watching_certificates = reloadable.watch_certificates();
    let ctx = Arc::new(ServerContext {
        config: running_config,
        tls,
        chain,
        queue,
        registry: Some(registry.clone()),
        auth: Some(auth.clone()),
        shutdown,
    });
    if let Some(socket) = web_listener {
        let parts = web::Parts {
            config: ctx.config.clone(),
            registry: registry.clone(),
            queue: ctx.queue.clone(),
            auth,
            tls: ctx.tls.clone(),
        };
        web::serve(socket, parts).await?;
    }
    tokio::spawn(registry.clone().run(ctx.queue.clone()));
    if let Some(socket) = metrics_listener {
        let sources = metrics::http::Sources {
            spool: ctx.queue.spool().clone(),
            registry: Some(registry.table()),
            census: Default::default(),
        };
        tokio::spawn(metrics::http::serve(socket, Arc::new(sources)));
    }

    tokio::spawn(reload_on_sighup(reloader.clone(), reloadable.clone()));
    tokio::spawn(reopen_log_on_sigusr1());
    tokio::spawn(systemd::keep_watchdog());
    tokio::spawn(trim_idle_instances(ctx.chain.clone()));
    if let Some(watching) = watching_certificates {
        tokio::spawn(watching);
    }
    let controls = admin::Controls {
        reloader: reloader.clone(),
        queue: ctx.queue.clone(),
        registry,
        reloadable,
    };
    tokio::spawn(admin::serve(admin, Arc::new(controls)));
    if let Some(watching) = watching {
        tokio::spawn(watching);
    }
    let mut terminate = signal(SignalKind::terminate())?;
    // The listeners are bound: connections are taken from here on.
    systemd::ready();
    let serving = tokio::spawn(listener::serve(ctx.clone(), listeners));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    systemd::stopping();
    stop_gracefully(&ctx, stop, serving).await;
    Ok(())
}

/// Stops listening, tells idle sessions 421, and lets the sessions in the middle of a
/// message and the deliveries under way finish, within `limits.shutdown_grace`. A delivery
/// cut short would be repeated after the restart, and the next hop would hold two copies;
/// a message is acknowledged only once on disk, so a session cut short loses nothing.
async fn stop_gracefully(
    ctx: &ServerContext,
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
) {
    let _ = stop.send(true);
    let grace = ctx.config.load().limits.shutdown_grace;
    let finished = tokio::time::timeout(grace, async {
        let _ = tokio::join!(serving, ctx.queue.drain());
    })
    .await;
    match finished {
        Ok(()) => tracing::info!("stopped: every session and delivery under way finished"),
        Err(_) => tracing::warn!(
            "stopped after limits.shutdown_grace ({}): sessions or deliveries were cut short; \
             their clients retry, and the deliveries are tried again at the next start",
            humantime::format_duration(grace)
        ),
    }
}

/// Every half minute, the running chain lets go of the module instances that no session
/// has needed for a while (see `Chain::trim_idle`).
async fn trim_idle_instances(chain: Arc<ArcSwap<Chain>>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        every.tick().await;
        chain.load().trim_idle();
    }
}

/// The policy engine (its compiled-module cache, the registry modules look up) and the
/// chain as the policies directory describes it, compiled off the async workers; and the
/// reloader that will swap in the next one.
async fn start_policies(
    config: &Config,
    registry: &Registry,
) -> anyhow::Result<(Arc<ArcSwap<Chain>>, Arc<Reloader>)> {
    let policies = &config.policies;
    // Made private when the relay makes it: a module put there is loaded and run (a
    // postmaster who deploys as another user opens it to that user).
    crate::private::create_dir_all(&policies.dir)
        .with_context(|| format!("policies.dir {}", policies.dir.display()))?;
    let cache_dir = config.cache_dir();
    let engine = PolicyEngine::new(config.limits.max_connections)
        .context("starting the policy engine")?
        .with_cache_dir(&cache_dir)
        .with_context(|| format!("policies.cache_dir {}", cache_dir.display()))?
        .with_counters(crate::policy::counters::Counters::configured(
            &config.counters,
        )?)
        .with_registry(registry.table());
    let chain = Chain::open(&engine, &policies.dir)
        .await
        .context("policies")?;
    tracing::info!(dir = %policies.dir.display(), chain = ?chain.names(), "policy chain loaded");
    if let Some(shortfall) = capacity_shortfall(chain.names().len(), config.limits.max_connections)
    {
        tracing::warn!("{shortfall}");
    }
    engine.retain_compiled(&chain.hashes());
    let chain = Arc::new(ArcSwap::from_pointee(chain));
    let reloader = Arc::new(Reloader::new(engine, policies.dir.clone(), chain.clone()));
    Ok((chain, reloader))
}

/// SIGUSR1 opens the log file again under its name: logrotate renames it, then signals
/// (`postrotate`), and the relay's lines go to the new file.
async fn reopen_log_on_sigusr1() {
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        return tracing::warn!("cannot listen for SIGUSR1; the log file cannot be reopened");
    };
    while usr1.recv().await.is_some() {
        match crate::logging::reopen() {
            Ok(true) => tracing::info!("SIGUSR1: log file reopened"),
            Ok(false) => tracing::info!("SIGUSR1: the log goes to stderr; nothing to reopen"),
            Err(e) => tracing::error!(
                "SIGUSR1: cannot reopen the log file: {e}; logging on to the old one"
            ),
        }
    }
}

/// SIGHUP reloads the policy chain (see [`reload`]), `sluice.toml` (see [`Reloadable`])
/// and the certificate.
async fn reload_on_sighup(reloader: Arc<Reloader>, reloadable: Arc<Reloadable>) {
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with sluice reload");
        return;
    };
    while hangup.recv().await.is_some() {
        systemd::reloading();
        let _ = reloader.reload("SIGHUP").await;
        let reloadable = reloadable.clone();
        let _ = tokio::task::spawn_blocking(move || reloadable.reload()).await;
        systemd::ready();
    }
}
