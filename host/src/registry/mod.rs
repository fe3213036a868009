//! The relay registry: the client addresses a postmaster registered to relay (with the
//! admin of record, a contact, the department and the purpose), and those blocked.
//!
//! - [`store`] — the SQLite database the relay and `sluice registry` share.
//! - [`table`] — the in-memory copy policies consult (the contract's `registry.lookup`).
//! - [`notice`] — the confirmation and expiry messages to a registration's contact.
//!
//! The running relay keeps the registry's books: it reloads the table when the database
//! changes, records when a registered address last relayed, removes registrations unused
//! for `expire_after`, and queues the notices that changes leave in the outbox. A change
//! by `sluice registry` asks it to catch up through the control socket; the periodic
//! round catches a change made while it was not listening.

pub mod notice;
pub mod requests;
pub mod store;
pub mod table;

use crate::config::Config;
use crate::queue::{self, Queue};
use crate::store::Location;
use crate::store::postgres::{Health, Listener};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use notice::{Notice, Wording};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
pub use table::Table;

/// The registry as the running relay keeps it.
pub struct Registry {
    table: Arc<ArcSwap<Table>>,
    store: Mutex<Store>,
    /// Uses seen since the last write: registered network → when it last relayed.
    uses: Mutex<HashMap<IpNet, u64>>,
    /// As configured; replaced by a reload of `sluice.toml`.
    settings: ArcSwap<Settings>,
    /// One round of book-keeping at a time, so a notice is never queued twice by two.
    round: tokio::sync::Mutex<()>,
    /// Outbox rows queued by this process.
    queued: Mutex<HashSet<i64>>,
    /// Messages accepted today, for the portal's overview.
    today: Mutex<Tally>,
    /// Where the store is, for `sluice status`.
    location: Location,
    /// A shared store's announcements of changes made by any node (PostgreSQL).
    listener: Option<Listener>,
    /// Set by the listener: catch up now rather than at the next round.
    announced: Arc<tokio::sync::Notify>,
    /// When the table in use was read (Unix seconds).
    read_at: AtomicU64,
}

/// Messages accepted on one day (UTC), by the registration that covered the client
/// (`None`: none did).
#[derive(Default)]
struct Tally {
    day: u64,
    by: HashMap<Option<IpNet>, u64>,
}

const DAY: u64 = 24 * 3600;

/// What the configuration says about the registry's book-keeping.
#[derive(Debug)]
pub struct Settings {
    hostname: String,
    notices_from: String,
    how_to_change: String,
    expire_after: Duration,
    check_interval: Duration,
}

impl Settings {
    pub fn of(config: &Config) -> Settings {
        Settings {
            hostname: config.hostname.clone(),
            notices_from: config.notices_from(),
            how_to_change: config.registry.how_to_change.clone(),
            expire_after: config.registry.expire_after,
            check_interval: config.registry.check_interval,
        }
    }
}

impl Registry {
    /// Opens the registry database named by the configuration and loads the table; with a
    /// shared store, starts listening for the changes other nodes make.
    pub fn open(config: &Config) -> anyhow::Result<Registry> {
        let location = Location::of(config);
        let mut store = Store::open(&location)?;
        store.changed()?;
        let table = store.table()?;
        let announced = Arc::new(tokio::sync::Notify::new());
        let listener = match &location {
            Location::Postgres(url) => {
                let announced = announced.clone();
                Some(Listener::start(url, move || announced.notify_one())?)
            }
            Location::Sqlite(_) => {
                // One node's own file: there whenever the relay is.
                crate::metrics::metrics().store_up.set(1);
                None
            }
        };
        Ok(Registry {
            location,
            listener,
            announced,
            read_at: AtomicU64::new(queue::now()),
            table: Arc::new(ArcSwap::from_pointee(table)),
            store: Mutex::new(store),
            uses: Mutex::default(),
            settings: ArcSwap::from_pointee(Settings::of(config)),
            round: tokio::sync::Mutex::new(()),
            queued: Mutex::default(),
            today: Mutex::default(),
        })
    }

    /// From now on, keeps the books as `settings` say (a reload of `sluice.toml`).
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// The table policies look addresses up in; replaced whole on every change.
    pub fn table(&self) -> Arc<ArcSwap<Table>> {
        self.table.clone()
    }

    /// A message from `ip` was accepted: if a registration covers it, that registration
    /// is in use (written to the database at the next round of book-keeping).
    pub fn relayed(&self, ip: IpAddr) {
        let table = self.table.load();
        let now = queue::now();
        let network = table.registration(ip).map(|r| r.network);
        if let Some(network) = network {
            self.uses().insert(network, now);
        }
        let mut today = self.today();
        if today.day != now / DAY {
            *today = Tally {
                day: now / DAY,
                by: HashMap::new(),
            };
        }
        *today.by.entry(network).or_default() += 1;
    }

    fn today(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.today.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages accepted today (UTC) by this relay.
    pub fn accepted_today(&self) -> u64 {
        let today = self.today();
        if today.day != queue::now() / DAY {
            return 0;
        }
        today.by.values().sum()
    }

    /// The registrations that sent the most messages today, most first, at most `n`.
    pub fn busiest(&self, n: usize) -> Vec<(IpNet, u64)> {
        let today = self.today();
        if today.day != queue::now() / DAY {
            return Vec::new();
        }
        let mut busiest: Vec<(IpNet, u64)> = today
            .by
            .iter()
            .filter_map(|(network, count)| network.map(|n| (n, *count)))
            .collect();
        busiest.sort_by_key(|(network, count)| (std::cmp::Reverse(*count), *network));
        busiest.truncate(n);
        busiest
    }

    fn uses(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, u64>> {
        self.uses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the books every `check_interval` until the process ends: see the module's
    /// documentation.
    pub async fn run(self: Arc<Self>, queue: Queue) {
        loop {
            let _ = self.catch_up(&queue).await;
            // Another node's change, announced by the shared store, is caught up at once.
            tokio::select! {
                () = tokio::time::sleep(self.settings.load().check_interval) => {}
                () = self.announced.notified() => {}
            }
        }
    }

    /// Where the store is and, for a shared one, whether it can be reached now (for
    /// `sluice status`).
    pub fn describe_store(&self) -> String {
        match self.listener.as_ref().map(Listener::health) {
            None | Some(Health::Up) => format!("{} (up)", self.location),
            Some(Health::Unavailable { since, error }) => format!(
                "{} UNAVAILABLE since {} ({error}): deciding by the registry as read at {}",
                self.location,
                humantime::format_rfc3339_seconds(since),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + Duration::from_secs(self.read_at.load(Ordering::Relaxed))
                ),
            ),
        }
    }

    /// One round of book-keeping now; when it returns `Ok`, the relay decides by the
    /// database as it is (`sluice registry` waits for this, so a block is in force when it
    /// returns).
    pub async fn catch_up(self: &Arc<Self>, queue: &Queue) -> Result<(), CatchUpError> {
        let _round = self.round.lock().await;
        let registry = self.clone();
        let failure = match tokio::task::spawn_blocking(move || registry.keep_books()).await {
            Ok(Ok(outbox)) => {
                self.send(queue, outbox).await;
                return Ok(());
            }
            Ok(Err(e)) => CatchUpError::Store(e),
            Err(e) => CatchUpError::Task(e),
        };
        tracing::error!(target: "sluice::registry", "{failure}");
        Err(failure)
    }

    /// One round: writes the uses seen, expires unused registrations, reloads the table
    /// if the database changed, and returns the notices waiting to be queued.
    fn keep_books(&self) -> anyhow::Result<Vec<(i64, Notice)>> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let uses: Vec<(IpNet, u64)> = std::mem::take(&mut *self.uses()).into_iter().collect();
        if !uses.is_empty()
            && let Err(e) = store.record_relayed(&uses)
        {
            // Kept for the next round: a lost use could expire a registration in use.
            let mut pending = self.uses();
            for (network, at) in uses {
                let seen = pending.entry(network).or_insert(at);
                *seen = (*seen).max(at);
            }
            return Err(e);
        }
        // What this connection wrote itself does not show in `changed()`.
        let mut reload = !uses.is_empty();
        let settings = self.settings.load();
        if !settings.expire_after.is_zero() {
            let before = queue::now().saturating_sub(settings.expire_after.as_secs());
            let wording = Wording {
                hostname: &settings.hostname,
                how_to_change: &settings.how_to_change,
            };
            // Uses seen since this round began are not written yet, but count.
            let in_use: HashSet<IpNet> = self.uses().keys().copied().collect();
            for r in store.expire(before, &in_use, |r| notice::expired(r, &wording))? {
                reload = true;
                tracing::warn!(
                    target: "sluice::registry",
                    network = %table::display(&r.network),
                    admin = %r.admin,
                    contact = %r.contact,
                    department = %r.department,
                    last_relayed = r.last_relayed_at.unwrap_or(0),
                    "registry: registration unused for {}: removed, contact notified",
                    humantime::format_duration(settings.expire_after),
                );
            }
        }
        if store.changed()? || reload {
            let table = store.table()?;
            tracing::debug!(
                target: "sluice::registry",
                registrations = table.registrations().len(),
                blocks = table.blocks().len(),
                "registry: table loaded"
            );
            self.table.store(Arc::new(table));
            self.read_at.store(queue::now(), Ordering::Relaxed);
        }
        store.outbox()
    }

    /// Queues the outbox's notices (signed on their way in, as everything the queue
    /// takes), forgetting each once it is safely in the spool (a crash in between sends it
    /// twice, never not at all). A row this process queued is never queued again by it,
    /// even if it could not be forgotten.
    async fn send(self: &Arc<Self>, queue: &Queue, outbox: Vec<(i64, Notice)>) {
        for (row, notice) in outbox {
            if self.queued().contains(&row) {
                continue;
            }
            // Taken by this node, or left to the node that took it.
            let registry = self.clone();
            let claimed = tokio::task::spawn_blocking(move || {
                registry
                    .store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .claim(row, queue::now())
            })
            .await;
            match claimed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => continue,
                Ok(Err(e)) => {
                    tracing::error!(target: "sluice::registry", error = %format!("{e:#}"), "registry: cannot claim a notice to <{}>; trying again later", notice.recipient);
                    continue;
                }
                Err(e) => {
                    tracing::error!(target: "sluice::registry", "registry task failed: {e}");
                    continue;
                }
            }
            let settings = self.settings.load();
            let (envelope, message) =
                notice::message(&notice, &settings.notices_from, &settings.hostname);
            let id = envelope.id.clone();
            if let Err(e) = queue.submit(envelope, message).await {
                tracing::error!(target: "sluice::registry", error = %e, "registry: cannot queue a notice to <{}>; trying again later", notice.recipient);
                continue;
            }
            self.queued().insert(row);
            tracing::info!(
                target: "sluice::registry",
                "{id}: registry notice to=<{}>, subject={:?}",
                notice.recipient,
                notice.subject
            );
            let registry = self.clone();
            let forgotten = tokio::task::spawn_blocking(move || {
                registry
                    .store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sent(row)
            })
            .await;
            if !matches!(forgotten, Ok(Ok(()))) {
                tracing::error!(target: "sluice::registry", "{id}: registry: cannot mark the notice sent; it may be sent again");
            }
        }
    }
}

/// Why a round of book-keeping failed; the relay goes on deciding by the table it has.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("registry: {0:#}")]
    Store(anyhow::Error),
    #[error("registry task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
