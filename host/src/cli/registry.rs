//! `sluice registry add|list|show|remove|block|unblock|history`: the table of client addresses
//! registered to relay, and the postmaster's blocks.
//!
//! The commands write the registry's database directly (SQLite keeps them and the relay
//! from stepping on each other), then tell the running relay, which reloads its copy and
//! queues the confirmation a registration leaves in the outbox. With no relay running, the
//! change waits in the database and the notice goes out when the relay starts.

use crate::admin::{self, Answer, Request};
use crate::config::Config;
use crate::queue;
use crate::registry::notice::{self, Wording};
use crate::registry::store::{Actor, Store};
use crate::registry::table::{Registration, display, parse_network};
use crate::smtp::valid_address;
use sluice_mail::Address;
use std::process::ExitCode;

/// What `sluice registry add` records.
pub struct NewRegistration {
    pub network: String,
    pub admin: String,
    pub contact: String,
    pub department: String,
    pub purpose: String,
}

/// `sluice registry add`.
pub fn add(config: &Config, new: NewRegistration) -> ExitCode {
    let result = (|| {
        let network = parse_network(&new.network).map_err(anyhow::Error::msg)?;
        let contact = new.contact.trim();
        if !valid_address(contact) || Address::parse(contact).is_none() {
            anyhow::bail!("--contact {contact:?} is not an email address (user@domain)");
        }
        for (flag, value) in [
            ("--admin", &new.admin),
            ("--dept", &new.department),
            ("--purpose", &new.purpose),
        ] {
            if value.trim().is_empty() {
                anyhow::bail!("{flag} must not be empty");
            }
        }
        let registration = Registration {
            network,
            admin: new.admin.trim().to_string(),
            contact: contact.to_string(),
            department: new.department.trim().to_string(),
            purpose: new.purpose.trim().to_string(),
            registered_at: queue::now(),
            last_relayed_at: None,
        };
        let confirmation = notice::confirmation(&registration, &Wording::of(config));
        open(config)?.register(&registration, &confirmation)?;
        Ok(registration)
    })();
    match result {
        Ok(r) => {
            let sent = match tell_relay(config) {
                Told::Done => "queued by the relay",
                Told::NotRunning => "the relay will send it when it starts; it is not running",
                Told::Failed => "the relay could not read the registry (see its log)",
            };
            println!(
                "registered {} for {} ({}); confirmation to <{}>: {sent}",
                display(&r.network),
                r.department,
                r.admin,
                r.contact
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `sluice registry list`.
pub fn list(config: &Config) -> ExitCode {
    let table = match open_existing(config).and_then(|mut s| s.table()) {
        Ok(table) => table,
        Err(e) => return fail(e),
    };
    let mut registrations = table.registrations().to_vec();
    registrations.sort_by_key(|r| r.network);
    println!(
        "{:<20} {:<12} {:<16} {:<11} {:<11} {:<28} purpose",
        "address", "admin", "department", "registered", "last relay", "contact"
    );
    for r in &registrations {
        println!(
            "{:<20} {:<12} {:<16} {:<11} {:<11} {:<28} {}",
            display(&r.network),
            r.admin,
            r.department,
            day(r.registered_at),
            r.last_relayed_at.map_or("never".into(), day),
            r.contact,
            r.purpose
        );
    }
    println!("{} registered", registrations.len());
    let mut blocks = table.blocks().to_vec();
    if !blocks.is_empty() {
        blocks.sort_by_key(|b| b.network);
        println!();
        println!("{:<20} {:<11} reason", "blocked", "since");
        for b in &blocks {
            println!(
                "{:<20} {:<11} {}",
                display(&b.network),
                day(b.blocked_at),
                b.reason
            );
        }
        println!("{} blocked", blocks.len());
    }
    ExitCode::SUCCESS
}

/// `sluice registry show IP`: the registration and block covering an address, as the
/// relay would find them (or, for a network, those of exactly that network).
pub fn show(config: &Config, what: &str) -> ExitCode {
    let result = (|| {
        let network = parse_network(what).map_err(anyhow::Error::msg)?;
        let table = open_existing(config)?.table()?;
        let address = (network.prefix_len() == network.max_prefix_len()).then(|| network.addr());
        let registration = match address {
            Some(ip) => table.registration(ip),
            None => table.registrations().iter().find(|r| r.network == network),
        }
        .cloned();
        let block = match address {
            Some(ip) => table.block(ip),
            None => table.blocks().iter().find(|b| b.network == network),
        }
        .cloned();
        Ok::<_, anyhow::Error>((registration, block))
    })();
    match result {
        Ok((None, None)) => {
            println!("{what}: not registered, not blocked");
            ExitCode::FAILURE
        }
        Ok((registration, block)) => {
            if let Some(r) = registration {
                println!("registration: {}", display(&r.network));
                println!("  admin:        {}", r.admin);
                println!("  contact:      {}", r.contact);
                println!("  department:   {}", r.department);
                println!("  purpose:      {}", r.purpose);
                println!("  registered:   {}", time(r.registered_at));
                println!(
                    "  last relayed: {}",
                    r.last_relayed_at.map_or("never".into(), time)
                );
            } else {
                println!("registration: none");
            }
            if let Some(b) = block {
                println!(
                    "blocked: {} since {}: {}",
                    display(&b.network),
                    time(b.blocked_at),
                    b.reason
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `sluice registry remove IP`.
pub fn remove(config: &Config, what: &str) -> ExitCode {
    let result = (|| {
        let network = parse_network(what).map_err(anyhow::Error::msg)?;
        open(config)?.unregister(&network, None)
    })();
    match result {
        Ok(Some((department, admin))) => {
            println!("removed {what} ({department}, {admin})");
            told(config)
        }
        Ok(None) => fail(anyhow::anyhow!(
            "{what} is not registered (see sluice registry list)"
        )),
        Err(e) => fail(e),
    }
}

/// `sluice registry block IP --reason TEXT`: refused from now on, without notice.
pub fn block(config: &Config, what: &str, reason: &str) -> ExitCode {
    let result = (|| {
        let network = parse_network(what).map_err(anyhow::Error::msg)?;
        if reason.trim().is_empty() {
            anyhow::bail!("--reason must not be empty: it is what the client is told");
        }
        open(config)?.block(&network, reason.trim(), queue::now())?;
        Ok(network)
    })();
    match result {
        Ok(network) => {
            println!("blocked {}", display(&network));
            told(config)
        }
        Err(e) => fail(e),
    }
}

/// `sluice registry unblock IP`.
pub fn unblock(config: &Config, what: &str) -> ExitCode {
    let result = (|| {
        let network = parse_network(what).map_err(anyhow::Error::msg)?;
        Ok::<_, anyhow::Error>((network, open(config)?.unblock(&network, "")?))
    })();
    match result {
        Ok((network, true)) => {
            println!("unblocked {}", display(&network));
            told(config)
        }
        Ok((_, false)) => fail(anyhow::anyhow!("{what} is not blocked")),
        Err(e) => fail(e),
    }
}

/// The store, to change: each change is recorded in the history as this user's, from the
/// command line.
fn open(config: &Config) -> anyhow::Result<Store> {
    let location = crate::store::Location::of(config);
    let store = Store::open(&location).map_err(|e| e.context(format!("store {location}")))?;
    Ok(store.acting_as(Actor {
        who: user_name(),
        origin: "command line".into(),
    }))
}

/// Who runs the command: the user behind sudo, else the login name, else the uid.
fn user_name() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid(2) cannot fail and touches no memory.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

/// `sluice registry history [NETWORK]`: every change, oldest first.
pub fn history(config: &Config, what: Option<&str>) -> ExitCode {
    let result = (|| {
        let network = what
            .map(|w| parse_network(w).map_err(anyhow::Error::msg))
            .transpose()?;
        open_existing(config)?.history(network.as_ref())
    })();
    match result {
        Ok(changes) => {
            println!(
                "{:<23} {:<12} {:<14} {:<9} {:<20} detail",
                "when", "who", "from", "action", "network"
            );
            for c in &changes {
                println!(
                    "{:<23} {:<12} {:<14} {:<9} {:<20} {}",
                    time(c.at),
                    c.who,
                    c.origin,
                    c.action,
                    parse_network(&c.network).map_or(c.network.clone(), |n| display(&n)),
                    c.detail
                );
            }
            println!("{} changes", changes.len());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The registry for reading: an error, not an empty registry, where there is none.
fn open_existing(config: &Config) -> anyhow::Result<Store> {
    Store::open(&crate::store::existing(config)?)
}

/// What the running relay said to a change.
enum Told {
    /// It has read the registry: the change is in force.
    Done,
    NotRunning,
    /// It answered with an error.
    Failed,
}

/// Tells the running relay that the registry changed, and waits until it has read it.
fn tell_relay(config: &Config) -> Told {
    match admin::request(&config.admin_socket(), &Request::RegistryChanged) {
        Ok(Answer::RegistryRead) => Told::Done,
        Ok(answer) => {
            let error = super::said(&answer).err().unwrap_or_default();
            eprintln!("sluice: the relay: {error}");
            Told::Failed
        }
        Err(e) if e.not_running() => Told::NotRunning,
        Err(e) => {
            eprintln!("sluice: {e}");
            Told::Failed
        }
    }
}

/// Tells the relay of a change and says what came of it: a change the running relay
/// could not take is a failure, though it is in the database.
fn told(config: &Config) -> ExitCode {
    match tell_relay(config) {
        Told::Done => ExitCode::SUCCESS,
        Told::NotRunning => {
            println!("(the relay is not running: in force when it starts)");
            ExitCode::SUCCESS
        }
        Told::Failed => {
            eprintln!("sluice: recorded, but the running relay has not read it (see its log)");
            ExitCode::FAILURE
        }
    }
}

fn day(unix: u64) -> String {
    notice::date_as(unix, "%Y-%m-%d")
}

fn time(unix: u64) -> String {
    notice::date_as(unix, "%Y-%m-%d %H:%M:%S UTC")
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("sluice: {e:#}");
    ExitCode::FAILURE
}
