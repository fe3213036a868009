//! What the portal does to the registry, and who may: the pages and the API both call
//! these, so neither can do more than the other, and each change goes through the store's
//! rules (the same as `sluice registry`) and into its history with who made it and from
//! where.
//!
//! A department sees and changes only the registrations whose admin of record it is, and
//! its own requests; anything else is "not found", whether or not it exists. A postmaster
//! sees everything.

use super::Portal;
use super::visitor::Visitor;
use crate::registry::notice::Wording;
use crate::registry::requests::{Checked, Decision, Form, Problems, Request, State};
use crate::registry::store::{Actor, Change, Refusal, Store};
use crate::registry::table::{Registration, display, parse_network};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// Why the portal did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("not found")]
    NotFound,
    #[error("for postmasters only")]
    Forbidden,
    /// The form's problems, by field.
    #[error("{0}")]
    Invalid(Problems),
    /// The store's rules said no (already registered, not pending, …).
    #[error("{0}")]
    Rule(String),
    #[error("the registry is unavailable; try again shortly")]
    Unavailable,
}

/// Where a change came from, for the history: the page or the API, and the client.
pub struct Origin<'a> {
    pub visitor: &'a Visitor,
    pub via: &'static str,
    pub client: IpAddr,
}

impl Origin<'_> {
    /// The admin of record a change must be made as: the visitor, unless a postmaster.
    /// Checked again in the store's own statement, so a table a moment old in memory
    /// cannot let a change through to a registration that has changed hands.
    fn owner(&self) -> Option<String> {
        (!self.visitor.is_postmaster()).then(|| self.visitor.identity.clone())
    }

    fn actor(&self) -> Actor {
        Actor {
            who: self.visitor.identity.clone(),
            origin: format!("{} {}", self.via, self.client),
        }
    }
}

/// Runs `work` on a store acting as `origin`'s visitor, off the async workers.
async fn with_store<T: Send + 'static>(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    work: impl FnOnce(&mut Store) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Refused> {
    let store = portal.store.clone();
    let actor = origin.actor();
    let done = tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        store.act_as(actor);
        work(&mut store)
    })
    .await;
    match done {
        Ok(Ok(value)) => Ok(value),
        // The store's rules explain themselves (already registered, not pending, …);
        // anything else is logged and hidden.
        Ok(Err(e)) => match e.downcast_ref::<Refusal>() {
            Some(refusal) => Err(Refused::Rule(refusal.0.clone())),
            None => {
                tracing::error!(target: "sluice::web", "portal: store: {e:#}");
                Err(Refused::Unavailable)
            }
        },
        Err(e) => {
            tracing::error!(target: "sluice::web", "portal: {e}");
            Err(Refused::Unavailable)
        }
    }
}

/// The relay takes up the change at once (its table, the mail the change queued).
async fn changed(portal: &Arc<Portal>) {
    let _ = portal.registry.catch_up(&portal.queue).await;
}

/// The network named in a form or a URL.
pub fn network(text: &str) -> Result<IpNet, Refused> {
    parse_network(text.trim()).map_err(|_| Refused::NotFound)
}

/// The registrations `visitor` may see, most recently registered first; a postmaster's
/// `query` matches any field.
pub fn registrations(portal: &Portal, visitor: &Visitor, query: &str) -> Vec<Registration> {
    let table = portal.registry.table().load_full();
    let query = query.trim().to_lowercase();
    let mut found: Vec<Registration> = table
        .registrations()
        .iter()
        .filter(|r| visitor.is_postmaster() || visitor.is(&r.admin))
        .filter(|r| {
            query.is_empty()
                || [
                    &display(&r.network),
                    &r.admin,
                    &r.contact,
                    &r.department,
                    &r.purpose,
                ]
                .iter()
                .any(|f| f.to_lowercase().contains(&query))
        })
        .cloned()
        .collect();
    found.sort_by_key(|r| std::cmp::Reverse(r.registered_at));
    found
}

/// One registration, if `visitor` may see it.
pub fn registration(
    portal: &Portal,
    visitor: &Visitor,
    network: &IpNet,
) -> Result<Registration, Refused> {
    let table = portal.registry.table().load_full();
    table
        .registrations()
        .iter()
        .find(|r| r.network == *network && (visitor.is_postmaster() || visitor.is(&r.admin)))
        .cloned()
        .ok_or(Refused::NotFound)
}

/// When a registration expires if it stays unused (`None`: expiry is off).
pub fn expires_at(portal: &Portal, r: &Registration) -> Option<u64> {
    let after = portal.config().registry.expire_after;
    (!after.is_zero()).then(|| r.last_relayed_at.unwrap_or(r.registered_at) + after.as_secs())
}

/// Changes a registration's contact, department and purpose.
pub async fn update(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    network: IpNet,
    contact: String,
    department: String,
    purpose: String,
) -> Result<(), Refused> {
    registration(portal, origin.visitor, &network)?;
    let owner = origin.owner();
    with_store(portal, origin, move |s| {
        s.update_registration(&network, owner.as_deref(), &contact, &department, &purpose)
    })
    .await?
    .then_some(())
    .ok_or(Refused::NotFound)?;
    changed(portal).await;
    Ok(())
}

/// Hands a registration to another admin of record (who alone sees it from then on).
pub async fn transfer(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    network: IpNet,
    admin: String,
) -> Result<(), Refused> {
    registration(portal, origin.visitor, &network)?;
    let owner = origin.owner();
    with_store(portal, origin, move |s| {
        s.transfer(&network, owner.as_deref(), &admin)
    })
    .await?
    .then_some(())
    .ok_or(Refused::NotFound)?;
    changed(portal).await;
    Ok(())
}

/// Removes a registration: mail from it is refused again at once.
pub async fn delete(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    network: IpNet,
) -> Result<(), Refused> {
    registration(portal, origin.visitor, &network)?;
    let owner = origin.owner();
    with_store(portal, origin, move |s| {
        s.unregister(&network, owner.as_deref())
    })
    .await?
    .ok_or(Refused::NotFound)?;
    changed(portal).await;
    Ok(())
}

/// Checks a request against the campus and the registry as they stand.
pub fn check(portal: &Portal, form: &Form) -> Result<Checked, Refused> {
    let table = portal.registry.table().load_full();
    form.check(&table, &super::space(&portal.config())?)
        .map_err(Refused::Invalid)
}

/// Records a request from the visitor; its id.
pub async fn submit(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    form: &Form,
) -> Result<i64, Refused> {
    let checked = check(portal, form)?;
    let requester = origin.visitor.identity.clone();
    let id = with_store(portal, origin, move |s| {
        s.submit_request(&checked, &requester)
    })
    .await?;
    tracing::info!(target: "sluice::web", requester = %origin.visitor.identity, network = %form.network.trim(), "portal: request #{id} submitted");
    Ok(id)
}

/// The requests `visitor` may see, newest first (a postmaster: everyone's).
pub async fn requests(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    open_only: bool,
) -> Result<Vec<Request>, Refused> {
    let requester = (!origin.visitor.is_postmaster()).then(|| origin.visitor.identity.clone());
    with_store(portal, origin, move |s| {
        s.requests(requester.as_deref(), open_only)
    })
    .await
}

/// One request, if `visitor` may see it.
pub async fn request(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    id: i64,
) -> Result<Request, Refused> {
    let found = with_store(portal, origin, move |s| s.request(id)).await?;
    found
        .filter(|r| origin.visitor.is_postmaster() || origin.visitor.identity == r.requester)
        .ok_or(Refused::NotFound)
}

/// The requester's answer to the postmaster's question: the request, changed, pending again.
pub async fn resubmit(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    id: i64,
    form: &Form,
) -> Result<(), Refused> {
    let request = request(portal, origin, id).await?;
    if request.requester != origin.visitor.identity {
        return Err(Refused::NotFound);
    }
    if request.state != State::NeedsInformation {
        return Err(Refused::Rule(format!(
            "request #{id} is {}; only a request with a question can be changed",
            request.state.as_str()
        )));
    }
    let checked = check(portal, form)?;
    with_store(portal, origin, move |s| s.resubmit_request(id, &checked)).await
}

/// The postmaster's decision on a request, with its mail.
pub async fn decide(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    id: i64,
    decision: Decision,
) -> Result<Request, Refused> {
    if !origin.visitor.is_postmaster() {
        return Err(Refused::Forbidden);
    }
    let config = portal.config();
    let space = super::space(&config)?;
    let decided = with_store(portal, origin, move |s| {
        s.decide(id, &decision, &space, &Wording::of(&config))
    })
    .await?;
    tracing::info!(target: "sluice::web", postmaster = %origin.visitor.identity, network = %display(&decided.network), "portal: request #{id} {}", decided.state.as_str());
    changed(portal).await;
    Ok(decided)
}

/// Blocks a network (postmasters only).
pub async fn block(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    network: IpNet,
    reason: String,
) -> Result<(), Refused> {
    if !origin.visitor.is_postmaster() {
        return Err(Refused::Forbidden);
    }
    let reason = reason.trim().to_string();
    if reason.is_empty() {
        return Err(Refused::Rule(
            "a reason is needed: it is what the client is told".into(),
        ));
    }
    with_store(portal, origin, move |s| {
        s.block(&network, &reason, crate::queue::now())
    })
    .await?;
    changed(portal).await;
    Ok(())
}

/// Lifts a block (postmasters only), with the reason for the history; false when there
/// was none.
pub async fn unblock(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    network: IpNet,
    reason: String,
) -> Result<bool, Refused> {
    if !origin.visitor.is_postmaster() {
        return Err(Refused::Forbidden);
    }
    let reason = reason.trim().to_string();
    let lifted = with_store(portal, origin, move |s| s.unblock(&network, &reason)).await?;
    changed(portal).await;
    Ok(lifted)
}

/// The history, newest first (postmasters only).
pub async fn history(
    portal: &Arc<Portal>,
    origin: &Origin<'_>,
    network: Option<IpNet>,
) -> Result<Vec<Change>, Refused> {
    if !origin.visitor.is_postmaster() {
        return Err(Refused::Forbidden);
    }
    let mut changes = with_store(portal, origin, move |s| s.history(network.as_ref())).await?;
    changes.reverse();
    Ok(changes)
}
