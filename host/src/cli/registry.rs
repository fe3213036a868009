//! `sluice registry add|list|show|remove|block|unblock`: the table of client addresses
//! registered to relay, and the postmaster's blocks.
//!
//! The commands write the registry's database directly (SQLite keeps them and the relay
//! from stepping on each other), then tell the running relay, which reloads its copy and
//! queues the confirmation a registration leaves in the outbox. With no relay running, the
//! change waits in the database and the notice goes out when the relay starts.

use crate::config::Config;
use crate::queue;
use crate::registry::notice::{self, Wording};
use crate::registry::store::Store;
use crate::registry::table::{Registration, display, parse_network};
use ipnet::IpNet;
use sluice_sdk::Address;
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
        if Address::parse(contact).is_none() || contact.contains(['<', '>', ',', ' ']) {
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
            let sent = if tell_relay(config) {
                "queued by the relay"
            } else {
                "the relay will send it when it starts; it is not running"
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
    let table = match open(config).and_then(|s| s.table()) {
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

/// `sluice registry show IP`: the registration and block covering an address (or of
/// exactly a network).
pub fn show(config: &Config, what: &str) -> ExitCode {
    let result = (|| {
        let network = parse_network(what).map_err(anyhow::Error::msg)?;
        let table = open(config)?.table()?;
        // An address is looked up as the relay would; a network must be registered as such.
        let covering = |nets: &[IpNet]| -> Option<usize> {
            if network.prefix_len() == network.max_prefix_len() {
                nets.iter().position(|n| n.contains(&network.addr()))
            } else {
                nets.iter().position(|n| *n == network)
            }
        };
        let regs: Vec<IpNet> = table.registrations().iter().map(|r| r.network).collect();
        let blocks: Vec<IpNet> = table.blocks().iter().map(|b| b.network).collect();
        let registration = covering(&regs).map(|i| table.registrations()[i].clone());
        let block = covering(&blocks).map(|i| table.blocks()[i].clone());
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
        open(config)?.unregister(&network)
    })();
    match result {
        Ok(Some(r)) => {
            tell_relay(config);
            println!(
                "removed {} ({}, {})",
                display(&r.network),
                r.department,
                r.admin
            );
            ExitCode::SUCCESS
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
            tell_relay(config);
            println!("blocked {}", display(&network));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `sluice registry unblock IP`.
pub fn unblock(config: &Config, what: &str) -> ExitCode {
    let result = (|| {
        let network = parse_network(what).map_err(anyhow::Error::msg)?;
        Ok::<_, anyhow::Error>((network, open(config)?.unblock(&network)?))
    })();
    match result {
        Ok((network, true)) => {
            tell_relay(config);
            println!("unblocked {}", display(&network));
            ExitCode::SUCCESS
        }
        Ok((_, false)) => fail(anyhow::anyhow!("{what} is not blocked")),
        Err(e) => fail(e),
    }
}

fn open(config: &Config) -> anyhow::Result<Store> {
    let db = config.registry_db();
    Store::open(&db).map_err(|e| e.context(format!("registry {}", db.display())))
}

/// Tells the running relay that the registry changed; false when no relay answered.
fn tell_relay(config: &Config) -> bool {
    crate::admin::request(&config.admin_socket(), "registry changed")
        .is_ok_and(|answer| answer.starts_with("ok"))
}

fn day(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn time(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("sluice: {e:#}");
    ExitCode::FAILURE
}
