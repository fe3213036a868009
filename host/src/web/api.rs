//! `/api/`: the portal's operations as JSON, for IPAM and configuration-management tools.
//! Authenticated by bearer tokens only (`sluice token add NAME --role ...`), never by the
//! browser's cookie, so a page on another site cannot drive it. A department token named
//! `NAME` acts as the admin of record `NAME`.
//!
//! A network in a path is written with its slash encoded: `/api/registrations/10.1.0.0%2F24`.

use super::Portal;
use super::accounts::Role;
use super::ops::{self, Origin, Refused};
use super::visitor::{Visitor, blocking};
use crate::registry::requests::{Decision, Form, Request};
use crate::registry::store::Change;
use crate::registry::table::{Registration, display};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;

pub fn router() -> Router<Arc<Portal>> {
    Router::new()
        .route("/registrations", get(registrations))
        .route(
            "/registrations/{network}",
            get(registration).patch(change).delete(delete),
        )
        .route("/requests", get(requests).post(submit))
        .route("/requests/{id}", get(request))
        .route("/requests/{id}/{decision}", post(decide))
        .route("/blocks", get(blocks).post(block))
        .route("/blocks/{network}", axum::routing::delete(unblock))
        .route("/history", get(history))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API endpoint") })
}

/// An error as the API says it: `{"error": "..."}` with the status.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn refused(refused: Refused) -> Response {
    match refused {
        Refused::NotFound => error(StatusCode::NOT_FOUND, "not found"),
        Refused::Forbidden => error(StatusCode::FORBIDDEN, "for postmasters only"),
        Refused::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string()),
        Refused::Rule(rule) => error(StatusCode::CONFLICT, &rule),
        Refused::Invalid(problems) => {
            let fields: serde_json::Map<String, Value> = problems
                .0
                .iter()
                .map(|(field, problem)| (field.to_string(), Value::from(problem.as_str())))
                .collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": problems.to_string(), "fields": fields })),
            )
                .into_response()
        }
    }
}

/// The caller of an API endpoint: a bearer token's. A department token named `NAME` acts
/// as the admin of record `NAME` (register with `--admin NAME`, or hand registrations to it).
pub struct Caller {
    visitor: Visitor,
    client: IpAddr,
}

impl Caller {
    fn origin(&self) -> Origin<'_> {
        Origin {
            visitor: &self.visitor,
            via: "api",
            client: self.client,
        }
    }
}

impl FromRequestParts<Arc<Portal>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        portal: &Arc<Portal>,
    ) -> Result<Caller, Response> {
        let client = parts
            .extensions
            .get::<ConnectInfo<super::listener::Peer>>()
            .map(|c| c.0.addr.ip().to_canonical())
            .ok_or_else(|| error(StatusCode::INTERNAL_SERVER_ERROR, "no peer"))?;
        let Some(secret) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|s| s.trim().to_string())
        else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer TOKEN (see sluice token add)",
            ));
        };
        let lookup = portal.clone();
        let Some((name, role)) = blocking(move || lookup.accounts.token(&secret)).await else {
            tracing::warn!(target: "sluice::web", client = %client, "api: unknown bearer token");
            return Err(error(StatusCode::UNAUTHORIZED, "unknown token"));
        };
        Ok(Caller {
            visitor: Visitor {
                identity: name,
                role,
                session: None,
            },
            client,
        })
    }
}

fn registration_json(portal: &Portal, r: &Registration) -> Value {
    json!({
        "network": display(&r.network),
        "admin": r.admin,
        "contact": r.contact,
        "department": r.department,
        "purpose": r.purpose,
        "registered_at": r.registered_at,
        "last_relayed_at": r.last_relayed_at,
        "expires_at": ops::expires_at(portal, r),
    })
}

#[derive(serde::Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn registrations(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Query(search): Query<Search>,
) -> Response {
    let found = ops::registrations(&portal, &caller.visitor, &search.q);
    Json(
        found
            .iter()
            .map(|r| registration_json(&portal, r))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn registration(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Path(network): Path<String>,
) -> Response {
    match ops::network(&network).and_then(|n| ops::registration(&portal, &caller.visitor, &n)) {
        Ok(r) => Json(registration_json(&portal, &r)).into_response(),
        Err(e) => refused(e),
    }
}

/// What a PATCH may change; what it leaves out stays as it is.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    contact: Option<String>,
    department: Option<String>,
    purpose: Option<String>,
    admin: Option<String>,
}

async fn change(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Path(network): Path<String>,
    Json(change): Json<Patch>,
) -> Response {
    let current = match ops::network(&network)
        .and_then(|n| ops::registration(&portal, &caller.visitor, &n))
    {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let origin = caller.origin();
    if change.contact.is_some() || change.department.is_some() || change.purpose.is_some() {
        let done = ops::update(
            &portal,
            &origin,
            current.network,
            change.contact.unwrap_or(current.contact.clone()),
            change.department.unwrap_or(current.department.clone()),
            change.purpose.unwrap_or(current.purpose.clone()),
        )
        .await;
        if let Err(e) = done {
            return refused(e);
        }
    }
    if let Some(admin) = change.admin
        && let Err(e) = ops::transfer(&portal, &origin, current.network, admin).await
    {
        return refused(e);
    }
    let table = portal.registry.table().load_full();
    match table
        .registrations()
        .iter()
        .find(|r| r.network == current.network)
    {
        Some(r) => Json(registration_json(&portal, r)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn delete(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Path(network): Path<String>,
) -> Response {
    let done = match ops::network(&network) {
        Ok(network) => ops::delete(&portal, &caller.origin(), network).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

#[derive(serde::Deserialize)]
struct Which {
    #[serde(default)]
    open: bool,
}

async fn requests(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Query(which): Query<Which>,
) -> Response {
    match ops::requests(&portal, &caller.origin(), which.open).await {
        Ok(found) => Json(found).into_response(),
        Err(e) => refused(e),
    }
}

/// A request through the API: the form's fields, and the terms accepted explicitly.
#[derive(serde::Deserialize)]
struct Submission {
    #[serde(flatten)]
    form: Form,
    #[serde(default)]
    accept_terms: bool,
}

async fn submit(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Json(submission): Json<Submission>,
) -> Response {
    if !submission.accept_terms {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "accept_terms: the terms of use must be accepted (true)",
        );
    }
    let origin = caller.origin();
    match ops::submit(&portal, &origin, &submission.form).await {
        Ok(id) => match ops::request(&portal, &origin, id).await {
            Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
            Err(e) => refused(e),
        },
        Err(e) => refused(e),
    }
}

async fn request(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Response {
    match ops::request(&portal, &caller.origin(), id).await {
        Ok(r) => Json::<Request>(r).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Reason {
    reason: String,
    question: String,
}

async fn decide(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Path((id, decision)): Path<(i64, String)>,
    body: axum::body::Bytes,
) -> Response {
    // Approving needs no body at all.
    let reason: Reason = if body.iter().all(u8::is_ascii_whitespace) {
        Reason::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(reason) => reason,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
        }
    };
    let decision = match decision.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny {
            reason: reason.reason,
        },
        "ask" => Decision::Ask {
            question: reason.question,
        },
        _ => return error(StatusCode::NOT_FOUND, "decide with approve, deny or ask"),
    };
    match ops::decide(&portal, &caller.origin(), id, decision).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => refused(e),
    }
}

async fn blocks(State(portal): State<Arc<Portal>>, caller: Caller) -> Response {
    if caller.visitor.role != Role::Postmaster {
        return refused(Refused::Forbidden);
    }
    let table = portal.registry.table().load_full();
    let blocks: Vec<Value> = table
        .blocks()
        .iter()
        .map(|b| json!({ "network": display(&b.network), "reason": b.reason, "blocked_at": b.blocked_at }))
        .collect();
    Json(blocks).into_response()
}

#[derive(serde::Deserialize)]
struct NewBlock {
    network: String,
    reason: String,
}

async fn block(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Json(new): Json<NewBlock>,
) -> Response {
    let network = match crate::registry::table::parse_network(new.network.trim()) {
        Ok(network) => network,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    match ops::block(&portal, &caller.origin(), network, new.reason).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({ "network": display(&network) })),
        )
            .into_response(),
        Err(e) => refused(e),
    }
}

#[derive(serde::Deserialize)]
struct Lifted {
    #[serde(default)]
    reason: String,
}

/// `DELETE /api/blocks/NET?reason=...`.
async fn unblock(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Path(network): Path<String>,
    Query(lifted): Query<Lifted>,
) -> Response {
    let done = match ops::network(&network) {
        Ok(network) => ops::unblock(&portal, &caller.origin(), network, lifted.reason).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "not blocked"),
        Err(e) => refused(e),
    }
}

#[derive(serde::Deserialize)]
struct HistoryOf {
    network: Option<String>,
}

async fn history(
    State(portal): State<Arc<Portal>>,
    caller: Caller,
    Query(of): Query<HistoryOf>,
) -> Response {
    let network = match of.network.as_deref().map(ops::network).transpose() {
        Ok(network) => network,
        Err(e) => return refused(e),
    };
    match ops::history(&portal, &caller.origin(), network).await {
        Ok(changes) => Json(changes.iter().map(change_json).collect::<Vec<_>>()).into_response(),
        Err(e) => refused(e),
    }
}

fn change_json(c: &Change) -> Value {
    json!({ "at": c.at, "who": c.who, "origin": c.origin, "action": c.action, "network": c.network, "detail": c.detail })
}
