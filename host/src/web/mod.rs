//! The registration portal (`[web] addr`): departments request relaying and keep their
//! registrations ("List Relays"); the postmaster reviews requests and keeps the registry;
//! tools do the same through a JSON API. Served by the relay itself, over HTTPS with its
//! certificate; the registry stays the one source of truth the policy chain reads.
//!
//! - [`listener`] — HTTPS, and plain HTTP from loopback or a trusted proxy only.
//! - [`accounts`] — sign-in links, sessions and API tokens, in the store.
//! - [`visitor`] — who is asking (cookie, single sign-on header, bearer token), and the
//!   CSRF check of every form.
//! - [`ops`] — what the portal does to the registry, with who may do it; the pages and
//!   the API both go through it, so neither can do more than the other.
//! - [`pages`] (layout), [`signin`], [`department`], [`postmaster`] — the HTML pages,
//!   rendered on the server with maud (checked at compile time, escaped by default). They
//!   work without JavaScript.
//! - [`api`] — `/api/`, JSON.

pub mod accounts;
mod api;
mod department;
pub mod listener;
mod ops;
mod pages;
mod postmaster;
mod signin;
mod visitor;

use crate::auth::Auth;
use crate::config::Config;
use crate::queue::Queue;
use crate::registry::Registry;
use crate::registry::store::Store;
use accounts::Accounts;
use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::{get, post};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Sign-in links sent to one address in [`LINK_WINDOW`], at most.
const LINKS_PER_ADDRESS: u32 = 3;
/// Sign-in links asked for by one client in [`LINK_WINDOW`], at most: an office behind
/// one NAT signs in a few people in a morning, a script asking for thousands is stopped.
const LINKS_PER_CLIENT: u32 = 10;
/// The window of the two limits above: a link's lifetime.
const LINK_WINDOW: Duration = accounts::LINK_LIFETIME;
/// The largest request body taken (axum's default is 2 MB).
const MAX_BODY: usize = 64 * 1024;
/// Addresses, and clients, whose sign-in requests are remembered, at most (each).
const MAX_LIMITED: usize = 10_000;

/// What the portal's handlers share.
pub struct Portal {
    config: Arc<ArcSwap<Config>>,
    registry: Arc<Registry>,
    queue: Queue,
    auth: Arc<Auth>,
    accounts: Accounts,
    /// The portal's connection to the store, one change at a time.
    store: Arc<Mutex<Store>>,
    /// Sign-in links sent, by address and by client.
    links: Mutex<LinkLimits>,
}

#[derive(Default)]
struct LinkLimits {
    by_address: HashMap<String, (Instant, u32)>,
    by_client: HashMap<IpAddr, (Instant, u32)>,
}

/// Why a sign-in link is not sent.
#[derive(Debug, PartialEq, Eq)]
enum LinkLimit {
    /// Said to the client: it is about the client, not the address.
    Client,
    /// Not said to the client, who would learn that someone asked for that address.
    Address,
}

impl LinkLimits {
    /// Counts a link asked for `address` (already checked to be one: at most 254 bytes) by
    /// `client` (an IPv6 /64 counts as one). When the maps are full of live entries, a new
    /// client or address is over its limit: memory stays bounded under a flood.
    fn count(&mut self, address: &str, client: IpAddr, now: Instant) -> Result<(), LinkLimit> {
        fn over<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, (Instant, u32)>,
            key: K,
            max: u32,
            now: Instant,
        ) -> bool {
            if map.len() >= MAX_LIMITED && !map.contains_key(&key) {
                map.retain(|_, (since, _)| now.duration_since(*since) < LINK_WINDOW);
                if map.len() >= MAX_LIMITED {
                    return true;
                }
            }
            let entry = map.entry(key).or_insert((now, 0));
            if now.duration_since(entry.0) >= LINK_WINDOW {
                *entry = (now, 0);
            }
            entry.1 += 1;
            entry.1 > max
        }
        if over(
            &mut self.by_client,
            crate::auth::key(client),
            LINKS_PER_CLIENT,
            now,
        ) {
            return Err(LinkLimit::Client);
        }
        if over(
            &mut self.by_address,
            address.to_ascii_lowercase(),
            LINKS_PER_ADDRESS,
            now,
        ) {
            return Err(LinkLimit::Address);
        }
        Ok(())
    }
}

impl Portal {
    /// The configuration as it stands (a reload of `sluice.toml` replaces it).
    fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The portal's address as its users reach it, for links in mail.
    fn base_url(&self) -> String {
        let config = self.config();
        match &config.web.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let port = config.web.addr.map_or(443, |a| a.port());
                format!("https://{}:{port}", config.hostname)
            }
        }
    }
}

/// The portal's parts from the running relay.
pub struct Parts {
    pub config: Arc<ArcSwap<Config>>,
    pub registry: Arc<Registry>,
    pub queue: Queue,
    pub auth: Arc<Auth>,
    pub tls: tokio_rustls::TlsAcceptor,
}

/// Binds `[web] addr`; an address that cannot be bound is an error at start-up.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("web.addr {addr}: cannot listen: {e}"))?;
    tracing::info!("registration portal on {}", socket.local_addr()?);
    Ok(socket)
}

/// Serves the portal until the process ends.
pub async fn serve(socket: TcpListener, parts: Parts) -> anyhow::Result<()> {
    let config = parts.config.load_full();
    let store = crate::store::Location::of(&config);
    let accounts = Accounts::open(&store).with_context(|| format!("store {store}"))?;
    let store = Arc::new(Mutex::new(
        Store::open(&store).with_context(|| format!("store {store}"))?,
    ));
    let portal = Arc::new(Portal {
        config: parts.config,
        registry: parts.registry,
        queue: parts.queue,
        auth: parts.auth,
        accounts,
        store,
        links: Mutex::default(),
    });
    let trusted = config.web.trusted_proxies.clone();
    tokio::spawn(listener::serve(socket, parts.tls, trusted, router(portal)));
    Ok(())
}

fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/", get(signin::home))
        .route("/style.css", get(pages::style))
        .route("/signin", get(signin::page).post(signin::send_link))
        .route("/signin/password", post(signin::password))
        .route(
            "/signin/link",
            get(signin::confirm_page).post(signin::use_link),
        )
        .route("/signout", post(signin::signout))
        .route("/relays", get(department::relays))
        .route(
            "/relays/edit",
            get(department::edit_page).post(department::edit),
        )
        .route("/relays/transfer", post(department::transfer))
        .route(
            "/relays/delete",
            get(department::delete_page).post(department::delete),
        )
        .route("/requests/new", get(department::request_page))
        .route("/requests", post(department::submit))
        .route(
            "/requests/{id}",
            get(department::request).post(department::resubmit),
        )
        .route("/review", get(postmaster::review_queue))
        .route(
            "/review/{id}",
            get(postmaster::review_page).post(postmaster::decide),
        )
        .route("/registry", get(postmaster::registry))
        .route("/registry.csv", get(postmaster::registry_csv))
        .route("/registry/block", post(postmaster::block))
        .route("/registry/unblock", post(postmaster::unblock))
        .route("/history", get(postmaster::history))
        .route("/overview", get(postmaster::overview))
        .nest("/api", api::router())
        .fallback(pages::not_found)
        // A form or an API call is a few kilobytes; nothing needs more.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(visitor::protect))
        .with_state(portal)
}

/// The networks requests may name: the `campus` less the `workstations` of the chain's
/// `campus-access` module (any, when the chain has none). A chain that cannot be read
/// answers nothing: no request is checked, or approved, against an unknown campus.
fn space(config: &Config) -> Result<crate::registry::requests::Space, ops::Refused> {
    use crate::policy::host::ConfigValue;
    use crate::policy::manifest::{self, ModuleSource};
    let chain = match manifest::load(&config.policies.dir) {
        Ok(Some(chain)) => chain,
        Ok(None) => manifest::default_chain(),
        Err(e) => {
            tracing::error!(target: "sluice::web", "portal: cannot read the chain for the campus networks: {e}");
            return Err(ops::Refused::Unavailable);
        }
    };
    let mut space = crate::registry::requests::Space::default();
    for spec in chain {
        if spec.source != ModuleSource::Builtin("campus-access".into()) {
            continue;
        }
        let networks = |key: &str| match spec.config.get(key) {
            Some(ConfigValue::TextList(list)) => list
                .iter()
                .filter_map(|n| crate::registry::table::parse_network(n).ok())
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        space.campus.extend(networks("campus"));
        space.workstations.extend(networks("workstations"));
    }
    Ok(space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_links_are_limited_per_client_and_per_address() {
        let mut limits = LinkLimits::default();
        let now = Instant::now();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..LINKS_PER_ADDRESS {
            assert_eq!(limits.count("a@example.edu", client, now), Ok(()));
        }
        assert_eq!(
            limits.count("A@example.edu", client, now),
            Err(LinkLimit::Address),
            "the address, whatever its case"
        );
        for n in 0..LINKS_PER_CLIENT - LINKS_PER_ADDRESS - 1 {
            assert_eq!(
                limits.count(&format!("{n}@example.edu"), client, now),
                Ok(())
            );
        }
        assert_eq!(
            limits.count("new@example.edu", client, now),
            Err(LinkLimit::Client)
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(limits.count("new@example.edu", other, now), Ok(()));
        let later = now + LINK_WINDOW;
        assert_eq!(limits.count("a@example.edu", client, later), Ok(()));
    }
}
