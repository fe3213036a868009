//! `sluice token add|remove|list`: bearer tokens for the portal's JSON API (`/api/`), for
//! IPAM and configuration-management tools. A token's secret is printed once, when it is
//! made; the store keeps only its hash.

use super::user::done;
use crate::config::Config;
use crate::registry::notice::date_as;
use crate::registry::store::Store;
use crate::store::Location;
use crate::web::accounts::Accounts;
pub use crate::web::accounts::Role;
use std::process::ExitCode;

fn open(config: &Config) -> anyhow::Result<Accounts> {
    let store = Location::of(config);
    // The registry's tables first: the portal's share the store with them.
    Store::open(&store).map_err(|e| e.context(format!("store {store}")))?;
    Accounts::open(&store).map_err(|e| e.context(format!("store {store}")))
}

/// `sluice token add NAME --role postmaster|department`: prints the secret.
pub fn add(config: &Config, name: &str, role: Role) -> ExitCode {
    match open(config).and_then(|a| a.add_token(name, role)) {
        Ok(secret) => {
            eprintln!(
                "added token {name} ({}); send it as 'Authorization: Bearer TOKEN'. It is shown only now:",
                role.as_str()
            );
            println!("{secret}");
            ExitCode::SUCCESS
        }
        Err(e) => done(Err(e)),
    }
}

/// `sluice token remove NAME`: the token stops working at once.
pub fn remove(config: &Config, name: &str) -> ExitCode {
    let result = (|| {
        crate::store::existing(config)?;
        if !open(config)?.remove_token(name)? {
            anyhow::bail!("no token {name}");
        }
        Ok(format!("removed token {name}"))
    })();
    done(result)
}

/// `sluice token list` (never a secret).
pub fn list(config: &Config) -> ExitCode {
    let tokens = match crate::store::existing(config).and_then(|_| open(config)?.tokens()) {
        Ok(tokens) => tokens,
        Err(e) => return done(Err(e)),
    };
    println!("{:<32} {:<11} {:<11} last used", "token", "role", "added");
    for t in &tokens {
        println!(
            "{:<32} {:<11} {:<11} {}",
            t.name,
            t.role.as_str(),
            date_as(t.created_at, "%Y-%m-%d"),
            t.last_used_at
                .map_or("never".into(), |at| date_as(at, "%Y-%m-%d %H:%M UTC"))
        );
    }
    println!("{} tokens", tokens.len());
    ExitCode::SUCCESS
}
