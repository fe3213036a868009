//! The registry on disk: tables in the embedded store (see [`crate::store`]), shared by
//! the running relay and the `sluice registry` commands.
//!
//! # Tables
//! ```text
//! registrations  network (canonical CIDR) → admin, contact, department, purpose,
//!                registered_at, last_relayed_at
//! blocks         network → reason, blocked_at
//! outbox         notices to send: a row is written in the same transaction as the change
//!                it tells of, claimed by one node, and removed once the message is in
//!                that node's spool
//! history        every change: when, who, from where, what, the network, the details;
//!                written in the same transaction as the change
//! ```
//!
//! Times are Unix seconds (the engines' integers are signed; these are far from the sign
//! bit). In PostgreSQL, triggers on `registrations` and `blocks` count and announce every
//! change (see [`crate::store::postgres`]), so every node reloads its table at once.

use super::notice::Notice;
use super::table::{Block, Registration, Table, display, parse_network};
use crate::store::{Db, Location, Sql, params};
use anyhow::Context;
use ipnet::IpNet;
use std::collections::HashSet;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registrations (
    network TEXT PRIMARY KEY,
    admin TEXT NOT NULL,
    contact TEXT NOT NULL,
    department TEXT NOT NULL,
    purpose TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    last_relayed_at INTEGER
);
CREATE TABLE IF NOT EXISTS blocks (
    network TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    blocked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    origin TEXT NOT NULL,
    action TEXT NOT NULL,
    network TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    claimed_at INTEGER
);
";

/// A change the registry's rules refuse, with the reason to show whoever asked for it (at
/// the command line, in the portal); any other error is the store's own, and not theirs
/// to see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Returns a [`Refusal`], as `anyhow::bail!` returns an error.
macro_rules! refuse {
    ($($reason:tt)*) => {
        return Err(anyhow::Error::new($crate::registry::store::Refusal(format!($($reason)*))))
    };
}
pub(crate) use refuse;

/// Who changes the registry, and from where, as the history records it.
#[derive(Debug, Clone)]
pub struct Actor {
    /// A user name (`root`, `alice`), or `relay` for the relay's own book-keeping.
    pub who: String,
    /// `command line`, `expiry`, and later the portal's client address.
    pub origin: String,
}

/// One change, as `sluice registry history` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub at: u64,
    pub who: String,
    pub origin: String,
    /// `register`, `remove`, `block`, `unblock` or `expire`.
    pub action: String,
    pub network: String,
    pub detail: String,
}

/// An open registry database.
pub struct Store {
    pub(super) db: Db,
    /// Who the changes made through this store are recorded as.
    pub(super) actor: Actor,
}

impl Store {
    /// Opens the registry in the store at `location`, creating its tables if needed.
    pub fn open(location: &Location) -> anyhow::Result<Store> {
        let mut db = Db::open(location)?;
        db.create(SCHEMA)
            .and_then(|()| db.create(super::requests::SCHEMA))
            .with_context(|| format!("{location}: creating the registry's tables"))?;
        // A store made before notices were claimed (by one node of several).
        if !db.has_column("outbox", "claimed_at")? {
            db.create("ALTER TABLE outbox ADD COLUMN claimed_at INTEGER")?;
        }
        db.watch_registry()
            .with_context(|| format!("{location}: announcing the registry's changes"))?;
        Ok(Store {
            db,
            actor: Actor {
                who: "relay".into(),
                origin: "relay".into(),
            },
        })
    }

    /// The registry in the store at `location`, if there is a store there: a command that
    /// only reads must not create an empty SQLite database where a wrong `--config` points.
    pub fn open_existing(location: &Location) -> anyhow::Result<Option<Store>> {
        if !location.exists() {
            return Ok(None);
        }
        Store::open(location).map(Some)
    }

    /// Records the changes made from now on as `actor`'s.
    pub fn acting_as(mut self, actor: Actor) -> Store {
        self.act_as(actor);
        self
    }

    /// Records the changes made from now on as `actor`'s.
    pub fn act_as(&mut self, actor: Actor) {
        self.actor = actor;
    }

    /// Every change to `network` (all changes, without one), oldest first.
    pub fn history(&mut self, network: Option<&IpNet>) -> anyhow::Result<Vec<Change>> {
        let rows = self.db.query(
            "SELECT at, who, origin, action, network, detail FROM history
             WHERE CAST(?1 AS TEXT) IS NULL OR network = ?1 ORDER BY id",
            params![network.map(|n| n.to_string())],
        )?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    at: row.time(0)?,
                    who: row.text(1)?,
                    origin: row.text(2)?,
                    action: row.text(3)?,
                    network: row.text(4)?,
                    detail: row.text(5)?,
                })
            })
            .collect()
    }

    /// Has anyone changed the registry since the last call? (True the first time.)
    pub fn changed(&mut self) -> anyhow::Result<bool> {
        self.db.registry_changed()
    }

    /// Every registration and block.
    pub fn table(&mut self) -> anyhow::Result<Table> {
        read_table(&mut self.db)
    }

    /// Registers `registration.network` and queues `notice`, together; an address already
    /// registered is refused (remove it first), so a registration never changes hands
    /// silently.
    pub fn register(&mut self, registration: &Registration, notice: &Notice) -> anyhow::Result<()> {
        let actor = &self.actor;
        self.db
            .write(|tx| insert_registration(tx, actor, registration, notice))
    }

    /// Removes the registration of exactly `network` (held by `owner`, when given: the
    /// admin of record, in any case), returning its department and admin.
    pub fn unregister(
        &mut self,
        network: &IpNet,
        owner: Option<&str>,
    ) -> anyhow::Result<Option<(String, String)>> {
        let actor = &self.actor;
        self.db.write(|tx| {
            let Some(row) = tx.query_one(
                "DELETE FROM registrations
                 WHERE network = ?1 AND (CAST(?2 AS TEXT) IS NULL OR lower(admin) = lower(?2))
                 RETURNING department, admin",
                params![network.to_string(), owner],
            )?
            else {
                return Ok(None);
            };
            let (department, admin) = (row.text(0)?, row.text(1)?);
            let detail = format!("admin={admin}, department={department}");
            record(tx, actor, "remove", network, &detail)?;
            Ok(Some((department, admin)))
        })
    }

    /// Blocks `network` (replacing the reason of an existing block).
    pub fn block(&mut self, network: &IpNet, reason: &str, now: u64) -> anyhow::Result<()> {
        let actor = &self.actor;
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO blocks (network, reason, blocked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (network) DO UPDATE SET reason = ?2, blocked_at = ?3",
                params![network.to_string(), reason, now as i64],
            )?;
            record(tx, actor, "block", network, &format!("reason={reason}"))
        })
    }

    /// Lifts the block of exactly `network`, with the postmaster's `reason` for the history
    /// (may be empty); false when there was none.
    pub fn unblock(&mut self, network: &IpNet, reason: &str) -> anyhow::Result<bool> {
        let actor = &self.actor;
        self.db.write(|tx| {
            let lifted = tx.execute(
                "DELETE FROM blocks WHERE network = ?1",
                params![network.to_string()],
            )? > 0;
            if lifted {
                let detail = if reason.is_empty() {
                    String::new()
                } else {
                    format!("reason={reason}")
                };
                record(tx, actor, "unblock", network, &detail)?;
            }
            Ok(lifted)
        })
    }

    /// Records when registrations last relayed: `(network, Unix seconds)`.
    pub fn record_relayed(&mut self, uses: &[(IpNet, u64)]) -> anyhow::Result<()> {
        self.db.write(|tx| {
            for (network, at) in uses {
                tx.execute(
                    "UPDATE registrations SET last_relayed_at = ?2
                     WHERE network = ?1 AND (last_relayed_at IS NULL OR last_relayed_at < ?2)",
                    params![network.to_string(), *at as i64],
                )?;
            }
            Ok(())
        })
    }

    /// Removes the registrations unused since `before` (Unix seconds; a registration never
    /// used counts from when it was made), except those in `in_use`, queueing
    /// `notice(registration)` for each, and returns those removed.
    pub fn expire(
        &mut self,
        before: u64,
        in_use: &HashSet<IpNet>,
        notice: impl Fn(&Registration) -> Notice + Sync,
    ) -> anyhow::Result<Vec<Registration>> {
        let candidates: Vec<Registration> = self
            .table()?
            .registrations()
            .iter()
            .filter(|r| {
                r.last_relayed_at.unwrap_or(r.registered_at) < before
                    && !in_use.contains(&r.network)
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let expiry = Actor {
            who: self.actor.who.clone(),
            origin: "expiry".into(),
        };
        self.db.write(|tx| {
            let mut removed = Vec::new();
            for registration in candidates {
                // Only if still unused: `sluice registry`, another round or another node
                // may have changed it.
                let deleted = tx.execute(
                    "DELETE FROM registrations
                     WHERE network = ?1 AND COALESCE(last_relayed_at, registered_at) < ?2",
                    params![registration.network.to_string(), before as i64],
                )?;
                if deleted > 0 {
                    queue_notice(tx, &notice(&registration))?;
                    let since = chrono::DateTime::from_timestamp(before as i64, 0)
                        .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string());
                    let unused = format!("unused since {since}; admin={}", registration.admin);
                    record(tx, &expiry, "expire", &registration.network, &unused)?;
                    removed.push(registration);
                }
            }
            Ok(removed)
        })
    }

    /// The notices waiting to be queued, oldest first, with their row ids.
    pub fn outbox(&mut self) -> anyhow::Result<Vec<(i64, Notice)>> {
        let rows = self.db.query(
            "SELECT id, recipient, subject, body FROM outbox ORDER BY id",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.int(0)?,
                    Notice {
                        recipient: row.text(1)?,
                        subject: row.text(2)?,
                        body: row.text(3)?,
                    },
                ))
            })
            .collect()
    }

    /// Takes the notice `id` to queue it, unless another node (or process) took it in the
    /// last `CLAIM_FOR` and may be queueing it now: so two nodes never both send it, and a
    /// node that died before it was done leaves it to the others.
    pub fn claim(&mut self, id: i64, now: u64) -> anyhow::Result<bool> {
        let taken = self.db.execute(
            "UPDATE outbox SET claimed_at = ?2
             WHERE id = ?1 AND (claimed_at IS NULL OR claimed_at < ?3)",
            params![id, now as i64, now.saturating_sub(CLAIM_FOR) as i64],
        )?;
        Ok(taken > 0)
    }

    /// Forgets a notice the relay has queued.
    pub fn sent(&mut self, id: i64) -> anyhow::Result<()> {
        self.db
            .execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
        Ok(())
    }
}

/// How long a claimed notice is left to the node that claimed it (seconds).
const CLAIM_FOR: u64 = 600;

/// Every registration and block, as `sql` (the store, or a transaction) sees them.
pub(crate) fn read_table(sql: &mut dyn Sql) -> anyhow::Result<Table> {
    let mut registrations = Vec::new();
    for row in sql.query(
        "SELECT network, admin, contact, department, purpose, registered_at, last_relayed_at
         FROM registrations",
        &[],
    )? {
        let Some(network) = network_of(&row.text(0)?) else {
            continue;
        };
        registrations.push(Registration {
            network,
            admin: row.text(1)?,
            contact: row.text(2)?,
            department: row.text(3)?,
            purpose: row.text(4)?,
            registered_at: row.time(5)?,
            last_relayed_at: row.opt_time(6)?,
        });
    }
    let mut blocks = Vec::new();
    for row in sql.query("SELECT network, reason, blocked_at FROM blocks", &[])? {
        let Some(network) = network_of(&row.text(0)?) else {
            continue;
        };
        blocks.push(Block {
            network,
            reason: row.text(1)?,
            blocked_at: row.time(2)?,
        });
    }
    Ok(Table::new(registrations, blocks))
}

/// Adds a registration, its notice and its history line in `tx`; an address already
/// registered is refused.
pub(super) fn insert_registration(
    tx: &mut dyn Sql,
    actor: &Actor,
    registration: &Registration,
    notice: &Notice,
) -> anyhow::Result<()> {
    let network = registration.network.to_string();
    if let Some(holder) = tx.query_one(
        "SELECT admin FROM registrations WHERE network = ?1",
        params![&network],
    )? {
        refuse!(
            "{} is already registered (admin {}); remove it first to register it again",
            display(&registration.network),
            holder.text(0)?
        );
    }
    tx.execute(
        "INSERT INTO registrations
         (network, admin, contact, department, purpose, registered_at, last_relayed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
        params![
            network,
            &registration.admin,
            &registration.contact,
            &registration.department,
            &registration.purpose,
            registration.registered_at as i64,
        ],
    )?;
    queue_notice(tx, notice)?;
    let detail = format!(
        "admin={}, contact={}, department={}, purpose={}",
        registration.admin, registration.contact, registration.department, registration.purpose
    );
    record(tx, actor, "register", &registration.network, &detail)
}

/// Adds a change to the history, in the transaction that makes it.
pub(super) fn record(
    tx: &mut dyn Sql,
    actor: &Actor,
    action: &str,
    network: &IpNet,
    detail: &str,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO history (at, who, origin, action, network, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            crate::queue::now() as i64,
            &actor.who,
            &actor.origin,
            action,
            network.to_string(),
            detail
        ],
    )?;
    Ok(())
}

pub(crate) fn queue_notice(tx: &mut dyn Sql, notice: &Notice) -> anyhow::Result<u64> {
    tx.execute(
        "INSERT INTO outbox (recipient, subject, body) VALUES (?1, ?2, ?3)",
        params![&notice.recipient, &notice.subject, &notice.body],
    )
}

/// A row's network; a row edited by hand into something else is skipped (and logged)
/// rather than making the whole registry unreadable.
fn network_of(text: &str) -> Option<IpNet> {
    parse_network(text)
        .map_err(
            |e| tracing::error!(target: "sluice::registry", "registry database: row skipped: {e}"),
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Location;
    use crate::store::testing::on_each_engine;

    on_each_engine!(
        a_registration_and_its_notice_are_written_together,
        every_change_is_in_the_history_with_who_made_it,
        expiry_spares_what_relayed_since
    );

    fn registration(network: &str, registered_at: u64) -> Registration {
        Registration {
            network: parse_network(network).unwrap(),
            admin: "jdoe".into(),
            contact: "jdoe@example.edu".into(),
            department: "physics".into(),
            purpose: "printer".into(),
            registered_at,
            last_relayed_at: None,
        }
    }

    fn notice(to: &str) -> Notice {
        Notice {
            recipient: to.into(),
            subject: "s".into(),
            body: "b".into(),
        }
    }

    fn a_registration_and_its_notice_are_written_together(location: &Location) {
        let mut store = Store::open(location).unwrap();
        store
            .register(&registration("10.1.2.3", 100), &notice("jdoe@example.edu"))
            .unwrap();
        let again = store.register(&registration("10.1.2.3", 200), &notice("x@example.edu"));
        assert!(
            again
                .unwrap_err()
                .to_string()
                .contains("already registered")
        );
        assert_eq!(
            store.outbox().unwrap().len(),
            1,
            "no notice for a refused change"
        );
        let (id, _) = store.outbox().unwrap()[0].clone();
        store.sent(id).unwrap();
        assert!(store.outbox().unwrap().is_empty());

        // Another connection (a postmaster's command) sees it, and the relay's sees the change.
        let mut other = Store::open(location).unwrap();
        assert!(other.changed().unwrap());
        assert!(!other.changed().unwrap());
        store
            .block(&parse_network("10.9.0.0/16").unwrap(), "spam", 5)
            .unwrap();
        assert!(other.changed().unwrap());
        let table = other.table().unwrap();
        assert_eq!(table.registrations().len(), 1);
        assert_eq!(table.blocks()[0].reason, "spam");
    }

    fn every_change_is_in_the_history_with_who_made_it(location: &Location) {
        let mut store = Store::open(location).unwrap().acting_as(Actor {
            who: "alice".into(),
            origin: "command line".into(),
        });
        let printer = parse_network("10.1.2.3").unwrap();
        store
            .register(&registration("10.1.2.3", 100), &notice("jdoe@example.edu"))
            .unwrap();
        store.block(&printer, "spam", 5).unwrap();
        assert!(store.unblock(&printer, "cleaned up").unwrap());
        // What changed nothing is not a change.
        assert!(!store.unblock(&printer, "").unwrap());
        assert!(
            store
                .register(&registration("10.1.2.3", 1), &notice("x@y"))
                .is_err()
        );
        // The relay's own book-keeping, through another connection.
        let mut relay = Store::open(location).unwrap();
        relay
            .expire(500, &HashSet::new(), |r| notice(&r.contact))
            .unwrap();
        let history = relay.history(Some(&printer)).unwrap();
        let said: Vec<(&str, &str, &str)> = history
            .iter()
            .map(|c| (c.who.as_str(), c.origin.as_str(), c.action.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("alice", "command line", "register"),
                ("alice", "command line", "block"),
                ("alice", "command line", "unblock"),
                ("relay", "expiry", "expire"),
            ]
        );
        assert!(history[1].detail.contains("reason=spam"));
        assert_eq!(history[2].detail, "reason=cleaned up");
        assert!(
            relay
                .history(Some(&parse_network("10.9.9.9").unwrap()))
                .unwrap()
                .is_empty()
        );
        assert_eq!(relay.history(None).unwrap().len(), 4);
    }

    fn expiry_spares_what_relayed_since(location: &Location) {
        let mut store = Store::open(location).unwrap();
        for (network, at) in [("10.0.0.1", 100), ("10.0.0.2", 100), ("10.0.0.3", 900)] {
            store
                .register(&registration(network, at), &notice("jdoe@example.edu"))
                .unwrap();
        }
        store
            .record_relayed(&[(parse_network("10.0.0.2").unwrap(), 800)])
            .unwrap();
        let expired = store
            .expire(500, &HashSet::new(), |r| notice(&r.contact))
            .unwrap();
        assert_eq!(
            expired
                .iter()
                .map(|r| display(&r.network))
                .collect::<Vec<_>>(),
            ["10.0.0.1"]
        );
        assert_eq!(store.outbox().unwrap().len(), 4);
        let left = store.table().unwrap();
        assert_eq!(left.registrations().len(), 2);
        let used = left.registration("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(used.last_relayed_at, Some(800));
        // A use the relay has seen but not written yet also keeps a registration.
        let in_use = HashSet::from([parse_network("10.0.0.3").unwrap()]);
        assert!(
            store
                .expire(1000, &in_use, |r| notice(&r.contact))
                .unwrap()
                .len()
                == 1
        );
        assert_eq!(store.table().unwrap().registrations().len(), 1);
    }
}
