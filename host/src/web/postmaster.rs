//! The postmaster's pages: the review queue, the registry (search, blocks, what expires
//! soon, CSV), the history of every change, and an overview drawn from the relay's own
//! counters.

use super::Portal;
use super::department::request_details;
use super::ops;
use super::pages::{csrf_field, day, flash, layout, moment, refused, then};
use super::visitor::{Posted, PostmasterOnly};
use crate::registry::requests::Decision;
use crate::registry::table::display;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use std::sync::Arc;

/// Registrations expiring within this are listed as expiring soon.
const SOON: u64 = 30 * 24 * 3600;

/// `GET /review`: the requests waiting for the postmaster.
pub async fn review_queue(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Query(done): Query<super::pages::Done>,
) -> Response {
    let open = match ops::requests(&portal, &page.origin(&visitor), true).await {
        Ok(open) => open,
        Err(e) => return refused(&page, e),
    };
    let body = html! {
        @if open.is_empty() {
            p { "Nothing waits for review." }
        } @else {
            div.table-wrap {
                table.stack #review {
                    thead { tr { th { "#" } th { "Address" } th { "Host name" } th { "Department" } th { "Requested by" } th { "Asked" } th { "State" } } }
                    tbody {
                        @for r in &open {
                            tr data-request-id=(r.id) {
                                td data-label="Request" { a.open href={ "/review/" (r.id) } { "#" (r.id) } }
                                td data-label="Address" { (display(&r.network)) }
                                td data-label="Host name" { (r.hostname) }
                                td data-label="Department" { (r.department) }
                                td data-label="Requested by" { (r.requester) }
                                td data-label="Asked" { (day(r.created_at)) }
                                td.state data-label="State" { (r.state.as_str()) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(&page, "Review", flash(done.done.as_deref()), body).into_response()
}

/// `GET /review/{id}`: one request, and the three decisions.
pub async fn review_page(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Path(id): Path<i64>,
) -> Response {
    let r = match ops::request(&portal, &page.origin(&visitor), id).await {
        Ok(r) => r,
        Err(e) => return refused(&page, e),
    };
    let table = portal.registry.table().load_full();
    let covering = table.registration(r.network.addr()).cloned();
    let action = format!("/review/{id}");
    let body = html! {
        (request_details(&r))
        @if let Some(c) = covering {
            p.note { "Already covered by the registration of " (display(&c.network)) " (" (c.admin) ")." }
        }
        @if !r.note.is_empty() {
            p.note { strong { "Note: " } (r.note) }
        }
        @if r.state.open() {
            div.actions {
                form method="post" action=(action) {
                    (csrf_field(&page.csrf))
                    input type="hidden" name="decision" value="approve";
                    button #approve type="submit" { "Approve and register" }
                }
            }
            form.card method="post" action=(action) {
                (csrf_field(&page.csrf))
                input type="hidden" name="decision" value="ask";
                label for="question" { "Ask the requester" }
                textarea #question name="text" required {}
                button.secondary #ask type="submit" { "Send the question" }
            }
            form.card method="post" action=(action) {
                (csrf_field(&page.csrf))
                input type="hidden" name="decision" value="deny";
                label for="deny-reason" { "Deny, with the reason the requester is told" }
                textarea #deny-reason name="text" required {}
                button.danger #deny type="submit" { "Deny" }
            }
        }
    };
    layout(&page, &format!("Request #{id}"), None, body).into_response()
}

#[derive(serde::Deserialize)]
pub struct Decide {
    #[serde(default)]
    decision: String,
    #[serde(default)]
    text: String,
}

/// `POST /review/{id}`.
pub async fn decide(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Path(id): Path<i64>,
    Posted(form): Posted<Decide>,
) -> Response {
    let (decision, done) = match form.decision.as_str() {
        "approve" => (Decision::Approve, "approved"),
        "deny" => (Decision::Deny { reason: form.text }, "denied"),
        "ask" => (
            Decision::Ask {
                question: form.text,
            },
            "asked",
        ),
        _ => {
            return refused(
                &page,
                ops::Refused::Rule("choose approve, ask or deny".into()),
            );
        }
    };
    then(
        &page,
        ops::decide(&portal, &page.origin(&visitor), id, decision).await,
        &format!("/review?done={done}"),
    )
}

#[derive(serde::Deserialize)]
pub struct Search {
    #[serde(default)]
    q: String,
    done: Option<String>,
}

/// `GET /registry?q=…`: every registration (or those matching), the blocks, and what
/// expires soon.
pub async fn registry(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Query(search): Query<Search>,
) -> Response {
    let found = ops::registrations(&portal, &visitor, &search.q);
    let table = portal.registry.table().load_full();
    let now = crate::queue::now();
    let mut soon: Vec<_> = ops::registrations(&portal, &visitor, "")
        .into_iter()
        .filter_map(|r| {
            ops::expires_at(&portal, &r)
                .filter(|at| *at < now + SOON)
                .map(|at| (at, r))
        })
        .collect();
    soon.sort_by_key(|(at, _)| *at);
    let mut blocks = table.blocks().to_vec();
    blocks.sort_by_key(|b| std::cmp::Reverse(b.blocked_at));
    let body = html! {
        form.actions role="search" method="get" action="/registry" {
            div.field {
                label for="q" { "Search address, admin, contact, department or purpose" }
                input #q type="text" name="q" value=(search.q);
            }
            button type="submit" { "Search" }
            a href="/registry.csv" { "Export as CSV" }
        }
        h2 { "Registrations (" (found.len()) ")" }
        (registration_table(&portal, &found))
        h2 { "Expiring within 30 days if unused (" (soon.len()) ")" }
        (registration_table(&portal, &soon.into_iter().map(|(_, r)| r).collect::<Vec<_>>()))
        h2 { "Blocked (" (blocks.len()) ")" }
        form.card method="post" action="/registry/block" {
            (csrf_field(&page.csrf))
            div.field { label for="block-network" { "Address or network" } input #block-network type="text" name="network" required; }
            div.field { label for="block-reason" { "Reason (the client is told)" } input #block-reason type="text" name="reason" required; }
            button.danger #block type="submit" { "Block" }
        }
        div.table-wrap {
            table.stack #blocks {
                thead { tr { th { "Address" } th { "Since" } th { "Reason" } th { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for b in &blocks {
                        tr data-network=(b.network.to_string()) {
                            td data-label="Address" { (display(&b.network)) }
                            td data-label="Since" { (day(b.blocked_at)) }
                            td data-label="Reason" { (b.reason) }
                            td {
                                form method="post" action="/registry/unblock" {
                                    (csrf_field(&page.csrf))
                                    input type="hidden" name="network" value=(b.network.to_string());
                                    label.visually-hidden for={ "unblock-" (b.network.to_string()) } { "Why the block is lifted" }
                                    input id={ "unblock-" (b.network.to_string()) } type="text" name="reason" placeholder="Why it is lifted";
                                    button.secondary type="submit" { "Unblock" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(&page, "Registry", flash(search.done.as_deref()), body).into_response()
}

fn registration_table(
    portal: &Portal,
    registrations: &[crate::registry::table::Registration],
) -> Markup {
    html! {
        div.table-wrap {
            table.registry.stack {
                thead { tr { th { "Address" } th { "Admin of record" } th { "Department" } th { "Contact" } th { "Purpose" } th { "Registered" } th { "Last used" } th { "Expires" } } }
                tbody {
                    @for r in registrations {
                        tr data-network=(r.network.to_string()) {
                            td data-label="Address" { a href={ "/history?network=" (r.network.to_string()) } { (display(&r.network)) } }
                            td data-label="Admin of record" { (r.admin) }
                            td data-label="Department" { (r.department) }
                            td data-label="Contact" { (r.contact) }
                            td data-label="Purpose" { (r.purpose) }
                            td data-label="Registered" { (day(r.registered_at)) }
                            td data-label="Last used" { (r.last_relayed_at.map_or("never".to_string(), day)) }
                            td data-label="Expires" { (ops::expires_at(portal, r).map_or("never".to_string(), day)) }
                        }
                    }
                }
            }
        }
    }
}

/// A CSV field: quoted, quotes doubled, and a leading `= + - @` defused so a spreadsheet
/// does not run it as a formula.
fn csv(field: &str) -> String {
    let field = if field.starts_with(['=', '+', '-', '@']) {
        format!("'{field}")
    } else {
        field.to_string()
    };
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// `GET /registry.csv`.
pub async fn registry_csv(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(_, visitor): PostmasterOnly,
) -> Response {
    let mut text = String::from(
        "network,admin,contact,department,purpose,registered,last_relayed,expires\r\n",
    );
    for r in ops::registrations(&portal, &visitor, "") {
        let fields = [
            display(&r.network),
            r.admin.clone(),
            r.contact.clone(),
            r.department.clone(),
            r.purpose.clone(),
            moment(r.registered_at),
            r.last_relayed_at.map(moment).unwrap_or_default(),
            ops::expires_at(&portal, &r).map(moment).unwrap_or_default(),
        ];
        text.push_str(&fields.iter().map(|f| csv(f)).collect::<Vec<_>>().join(","));
        text.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"relay-registry.csv\"",
            ),
        ],
        text,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct BlockForm {
    #[serde(default)]
    network: String,
    #[serde(default)]
    reason: String,
}

/// `POST /registry/block`.
pub async fn block(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Posted(form): Posted<BlockForm>,
) -> Response {
    let network = match crate::registry::table::parse_network(form.network.trim()) {
        Ok(network) => network,
        Err(e) => return refused(&page, ops::Refused::Rule(e)),
    };
    then(
        &page,
        ops::block(&portal, &page.origin(&visitor), network, form.reason).await,
        "/registry?done=blocked",
    )
}

/// `POST /registry/unblock`.
pub async fn unblock(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Posted(form): Posted<BlockForm>,
) -> Response {
    let done = match ops::network(&form.network) {
        Ok(network) => ops::unblock(&portal, &page.origin(&visitor), network, form.reason).await,
        Err(e) => Err(e),
    };
    then(&page, done, "/registry?done=unblocked")
}

#[derive(serde::Deserialize)]
pub struct HistoryOf {
    network: Option<String>,
}

/// `GET /history?network=…`: every change, newest first.
pub async fn history(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, visitor): PostmasterOnly,
    Query(of): Query<HistoryOf>,
) -> Response {
    let network = match of
        .network
        .as_deref()
        .filter(|n| !n.trim().is_empty())
        .map(ops::network)
        .transpose()
    {
        Ok(network) => network,
        Err(e) => return refused(&page, e),
    };
    let changes = match ops::history(&portal, &page.origin(&visitor), network).await {
        Ok(changes) => changes,
        Err(e) => return refused(&page, e),
    };
    let title = match &network {
        Some(n) => format!("History of {}", display(n)),
        None => "History".to_string(),
    };
    let body = html! {
        div.table-wrap {
            table.stack #history {
                thead { tr { th { "When" } th { "Who" } th { "From where" } th { "What" } th { "Address" } th { "Details" } } }
                tbody {
                    @for c in &changes {
                        tr {
                            td data-label="When" { (moment(c.at)) }
                            td data-label="Who" { (c.who) }
                            td data-label="From where" { (c.origin) }
                            td data-label="What" { (c.action) }
                            td data-label="Address" { a href={ "/history?network=" (c.network) } { (c.network) } }
                            td data-label="Details" { (c.detail) }
                        }
                    }
                }
            }
        }
    };
    layout(&page, &title, None, body).into_response()
}

/// `GET /overview`: the queue, today's mail, refusals by reason, the busiest registered
/// senders.
pub async fn overview(
    State(portal): State<Arc<Portal>>,
    PostmasterOnly(page, _): PostmasterOnly,
) -> Response {
    let counts = crate::metrics::metrics().overview();
    let spool = portal.queue.spool().clone();
    let queued = tokio::task::spawn_blocking(move || spool.list().map(|ids| ids.len()))
        .await
        .ok()
        .and_then(Result::ok);
    let table = portal.registry.table().load_full();
    let busiest = portal.registry.busiest(10);
    let body = html! {
        div.stats {
            div.stat { span { "In the queue" } strong #queue-size { (queued.map_or("?".to_string(), |n| n.to_string())) } }
            div.stat { span { "Accepted today" } strong #accepted-today { (portal.registry.accepted_today()) } }
            div.stat { span { "Accepted since start" } strong { (counts.accepted) } }
            div.stat { span { "Registrations" } strong { (table.registrations().len()) } }
            div.stat { span { "Blocks" } strong { (table.blocks().len()) } }
        }
        h2 { "Refusals since start, by reason" }
        (bars(&counts.refusals))
        h2 { "Busiest registered senders today" }
        (bars(&busiest.iter().map(|(n, c)| (display(n), *c)).collect::<Vec<_>>()))
    };
    layout(&page, "Overview", None, body).into_response()
}

/// A bar chart drawn in SVG (no script, no inline style).
fn bars(rows: &[(String, u64)]) -> Markup {
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    html! {
        @if rows.is_empty() {
            p { "None." }
        } @else {
            @for (label, count) in rows {
                div.bar {
                    span.label { (label) }
                    svg width="200" height="16" role="img" aria-label=(format!("{label}: {count}")) {
                        rect width=(count * 200 / max) height="16" fill="#0b5cad" {}
                    }
                    span { (count) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(super::csv("plain"), "\"plain\"");
        assert_eq!(super::csv("say \"hi\", ok"), "\"say \"\"hi\"\", ok\"");
        assert_eq!(super::csv("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
    }
}
