//! The department's pages: the request form, and "List Relays", where the admin of record
//! keeps their registrations (change, hand over, delete) and follows their requests.

use super::Portal;
use super::ops::{self, Refused};
use super::pages::{csrf_field, day, field, flash, layout, moment, refused, then};
use super::visitor::{Page, Posted, SignedIn};
use crate::registry::requests::{Form, Problems, Request, State as RequestState, VOLUMES};
use crate::registry::table::display;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use std::sync::Arc;

/// `GET /relays`: "List Relays".
pub async fn relays(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Query(done): Query<super::pages::Done>,
) -> Response {
    let mine: Vec<_> = ops::registrations(&portal, &visitor, "")
        .into_iter()
        .filter(|r| visitor.is(&r.admin))
        .collect();
    let requests = match ops::requests(&portal, &page.origin(&visitor), false).await {
        Ok(all) => all
            .into_iter()
            .filter(|r| r.requester == visitor.identity)
            .collect::<Vec<_>>(),
        Err(e) => return refused(&page, e),
    };
    let body = html! {
        p { a.button #new-request href="/requests/new" { "Request relaying for a system" } }
        h2 { "Your registrations" }
        @if mine.is_empty() {
            p { "You are the admin of record of no registration." }
        } @else {
            div.table-wrap {
                table.stack #registrations {
                    thead { tr { th { "Address" } th { "Department" } th { "Contact" } th { "Purpose" } th { "Last used" } th { "Expires if unused" } th { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for r in &mine {
                            @let network = r.network.to_string();
                            tr data-network=(network) {
                                td data-label="Address" { (display(&r.network)) }
                                td data-label="Department" { (r.department) }
                                td data-label="Contact" { (r.contact) }
                                td data-label="Purpose" { (r.purpose) }
                                td data-label="Last used" { (r.last_relayed_at.map_or("never".to_string(), day)) }
                                td data-label="Expires if unused" { (ops::expires_at(&portal, r).map_or("never".to_string(), day)) }
                                td {
                                    a.edit href={ "/relays/edit?network=" (network) } { "Change" } " · "
                                    a.delete href={ "/relays/delete?network=" (network) } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Your requests" }
        @if requests.is_empty() {
            p { "You have made no request." }
        } @else {
            (request_table(&requests))
        }
    };
    layout(&page, "List Relays", flash(done.done.as_deref()), body).into_response()
}

fn request_table(requests: &[Request]) -> Markup {
    html! {
        div.table-wrap {
            table.stack #requests {
                thead { tr { th { "#" } th { "Address" } th { "Host name" } th { "Asked" } th { "State" } th { "Postmaster's note" } } }
                tbody {
                    @for r in requests {
                        tr data-request-id=(r.id) {
                            td data-label="Request" { a href={ "/requests/" (r.id) } { "#" (r.id) } }
                            td data-label="Address" { (display(&r.network)) }
                            td data-label="Host name" { (r.hostname) }
                            td data-label="Asked" { (day(r.created_at)) }
                            td.state data-label="State" { (r.state.as_str()) }
                            td data-label="Postmaster's note" { (r.note) }
                        }
                    }
                }
            }
        }
    }
}

/// The request form, filled with `form`, and `problems` by field.
fn request_form(
    portal: &Portal,
    page: &Page,
    action: &str,
    form: &Form,
    problems: &Problems,
) -> Markup {
    let about = |field: &str| -> Vec<String> {
        problems
            .0
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, p)| p.clone())
            .collect()
    };
    let terms = portal.config().web.terms.clone();
    html! {
        @if !problems.is_empty() {
            div.error role="alert" {
                p { "The request was not sent. Please correct:" }
                ul { @for (f, p) in &problems.0 { li { a href={ "#" (f) } { (f) } ": " (p) } } }
            }
        }
        form #request-form method="post" action=(action) novalidate {
            (csrf_field(&page.csrf))
            (field("network", "Address or network", &form.network, Some("The IPv4 or IPv6 address of the system (or a small network, as CIDR), on the campus network and not in a workstation range."), &about("network")))
            (field("hostname", "Host name", &form.hostname, Some("The system's name in DNS."), &about("hostname")))
            (field("department", "Department", &form.department, None, &about("department")))
            (field("admin", "Admin of record", &form.admin, Some("The person who answers for the system. Only the admin of record sees and changes the registration here."), &about("admin")))
            (field("contact", "Contact e-mail", &form.contact, Some("Where the confirmation and notices go: a list or shared mailbox outlives a person."), &about("contact")))
            div.field {
                label for="purpose" { "Purpose" }
                p.hint #purpose-help { "What the system sends, and to whom." }
                textarea #purpose name="purpose" aria-describedby="purpose-help" aria-invalid=[(!about("purpose").is_empty()).then_some("true")] { (form.purpose) }
                @for p in about("purpose") { p.error { "Purpose: " (p) } }
            }
            div.field {
                label for="volume" { "Expected volume" }
                select #volume name="volume" aria-invalid=[(!about("volume").is_empty()).then_some("true")] {
                    option value="" { "Choose…" }
                    @for (value, words) in VOLUMES {
                        option value=(value) selected[form.volume == value] { (words) }
                    }
                }
                @for p in about("volume") { p.error { "Expected volume: " (p) } }
            }
            div.field {
                label for="senders" { "Sender addresses" }
                p.hint #senders-help { "The From addresses the system uses, one per line." }
                textarea #senders name="senders" aria-describedby="senders-help" aria-invalid=[(!about("senders").is_empty()).then_some("true")] { (form.senders) }
                @for p in about("senders") { p.error { "Sender addresses: " (p) } }
            }
            fieldset.card {
                legend { "Terms of use" }
                ul.terms { @for t in &terms { li { (t) } } }
                div.check {
                    input #terms type="checkbox" name="terms" value="accepted" required;
                    label for="terms" { "I have read the terms of use and accept them for this system." }
                }
                @for p in about("terms") { p.error { "Terms of use: " (p) } }
            }
            button #submit-request type="submit" { "Send the request" }
        }
    }
}

/// `GET /requests/new`.
pub async fn request_page(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
) -> Response {
    let form = Form {
        admin: visitor.identity.clone(),
        contact: if visitor.identity.contains('@') {
            visitor.identity.clone()
        } else {
            String::new()
        },
        ..Form::default()
    };
    let body = request_form(&portal, &page, "/requests", &form, &Problems::default());
    layout(&page, "Request relaying", None, body).into_response()
}

/// A request form as posted: the fields, and the terms box.
#[derive(serde::Deserialize)]
pub struct Posting {
    #[serde(flatten)]
    form: Form,
    #[serde(default)]
    terms: Option<String>,
}

/// The form's problems, with the terms box's.
fn checked(portal: &Portal, posting: &Posting) -> Result<(), Problems> {
    let mut problems = match ops::check(portal, &posting.form) {
        Ok(_) => Problems::default(),
        Err(Refused::Invalid(problems)) => problems,
        Err(e) => Problems(vec![("network", e.to_string())]),
    };
    if posting.terms.as_deref() != Some("accepted") {
        problems
            .0
            .push(("terms", "accept the terms of use to send a request".into()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `POST /requests`.
pub async fn submit(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Posted(posting): Posted<Posting>,
) -> Response {
    if let Err(problems) = checked(&portal, &posting) {
        let body = request_form(&portal, &page, "/requests", &posting.form, &problems);
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            layout(&page, "Request relaying", None, body),
        )
            .into_response();
    }
    match ops::submit(&portal, &page.origin(&visitor), &posting.form).await {
        Ok(_) => Redirect::to("/relays?done=requested").into_response(),
        Err(Refused::Invalid(problems)) => {
            let body = request_form(&portal, &page, "/requests", &posting.form, &problems);
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(&page, "Request relaying", None, body),
            )
                .into_response()
        }
        Err(Refused::Rule(rule)) => {
            let body = request_form(
                &portal,
                &page,
                "/requests",
                &posting.form,
                &Problems(vec![("network", rule)]),
            );
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(&page, "Request relaying", None, body),
            )
                .into_response()
        }
        Err(e) => refused(&page, e),
    }
}

fn form_of(r: &Request) -> Form {
    Form {
        network: display(&r.network),
        hostname: r.hostname.clone(),
        department: r.department.clone(),
        admin: r.admin.clone(),
        contact: r.contact.clone(),
        purpose: r.purpose.clone(),
        volume: r.volume.clone(),
        senders: r.senders.join("\n"),
    }
}

/// What a request says, as a definition list.
pub fn request_details(r: &Request) -> Markup {
    html! {
        dl.card {
            dt { "Address" } dd { (display(&r.network)) }
            dt { "Host name" } dd { (r.hostname) }
            dt { "Department" } dd { (r.department) }
            dt { "Admin of record" } dd { (r.admin) }
            dt { "Contact" } dd { (r.contact) }
            dt { "Purpose" } dd { (r.purpose) }
            dt { "Expected volume" } dd { (VOLUMES.iter().find(|(v, _)| *v == r.volume).map_or(r.volume.as_str(), |(_, w)| w)) }
            dt { "Sender addresses" } dd { @for s in &r.senders { (s) br; } }
            dt { "Requested by" } dd { (r.requester) }
            dt { "Asked" } dd { (moment(r.created_at)) }
            dt { "State" } dd.state { (r.state.as_str()) }
        }
    }
}

/// `GET /requests/{id}`: a request; with the postmaster's question, the form to answer.
pub async fn request(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Path(id): Path<i64>,
) -> Response {
    let r = match ops::request(&portal, &page.origin(&visitor), id).await {
        Ok(r) => r,
        Err(e) => return refused(&page, e),
    };
    let body = html! {
        @if !r.note.is_empty() {
            p.note { strong { "The postmaster: " } (r.note) }
        }
        (request_details(&r))
        @if r.state == RequestState::NeedsInformation && r.requester == visitor.identity {
            h2 { "Answer by changing the request" }
            (request_form(&portal, &page, &format!("/requests/{id}"), &form_of(&r), &Problems::default()))
        }
    };
    layout(&page, &format!("Request #{id}"), None, body).into_response()
}

/// `POST /requests/{id}`: the answer to a question.
pub async fn resubmit(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Path(id): Path<i64>,
    Posted(posting): Posted<Posting>,
) -> Response {
    let action = format!("/requests/{id}");
    if let Err(problems) = checked(&portal, &posting) {
        let body = request_form(&portal, &page, &action, &posting.form, &problems);
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            layout(&page, &format!("Request #{id}"), None, body),
        )
            .into_response();
    }
    then(
        &page,
        ops::resubmit(&portal, &page.origin(&visitor), id, &posting.form).await,
        "/relays?done=answered",
    )
}

#[derive(serde::Deserialize)]
pub struct Which {
    #[serde(default)]
    network: String,
}

/// `GET /relays/edit?network=…`: change a registration, or hand it over.
pub async fn edit_page(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Query(which): Query<Which>,
) -> Response {
    let r =
        match ops::network(&which.network).and_then(|n| ops::registration(&portal, &visitor, &n)) {
            Ok(r) => r,
            Err(e) => return refused(&page, e),
        };
    let network = r.network.to_string();
    let body = html! {
        form #edit-form.card method="post" action="/relays/edit" {
            (csrf_field(&page.csrf))
            input type="hidden" name="network" value=(network);
            (field("contact", "Contact e-mail", &r.contact, None, &[]))
            (field("department", "Department", &r.department, None, &[]))
            div.field {
                label for="purpose" { "Purpose" }
                textarea #purpose name="purpose" { (r.purpose) }
            }
            button #save type="submit" { "Save" }
        }
        h2 { "Hand over to another admin of record" }
        form #transfer-form.card method="post" action="/relays/transfer" {
            (csrf_field(&page.csrf))
            input type="hidden" name="network" value=(network);
            (field("admin", "New admin of record", "", Some("Their sign-in address. After this, only they see the registration here."), &[]))
            button.secondary #transfer type="submit" { "Hand over" }
        }
    };
    layout(
        &page,
        &format!("Change {}", display(&r.network)),
        None,
        body,
    )
    .into_response()
}

#[derive(serde::Deserialize)]
pub struct Edit {
    #[serde(default)]
    network: String,
    #[serde(default)]
    contact: String,
    #[serde(default)]
    department: String,
    #[serde(default)]
    purpose: String,
}

/// `POST /relays/edit`.
pub async fn edit(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Posted(edit): Posted<Edit>,
) -> Response {
    let done = match ops::network(&edit.network) {
        Ok(network) => {
            ops::update(
                &portal,
                &page.origin(&visitor),
                network,
                edit.contact,
                edit.department,
                edit.purpose,
            )
            .await
        }
        Err(e) => Err(e),
    };
    then(&page, done, "/relays?done=changed")
}

#[derive(serde::Deserialize)]
pub struct Transfer {
    #[serde(default)]
    network: String,
    #[serde(default)]
    admin: String,
}

/// `POST /relays/transfer`.
pub async fn transfer(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Posted(t): Posted<Transfer>,
) -> Response {
    let done = match ops::network(&t.network) {
        Ok(network) => ops::transfer(&portal, &page.origin(&visitor), network, t.admin).await,
        Err(e) => Err(e),
    };
    then(&page, done, "/relays?done=transferred")
}

/// `GET /relays/delete?network=…`: are you sure?
pub async fn delete_page(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Query(which): Query<Which>,
) -> Response {
    let r =
        match ops::network(&which.network).and_then(|n| ops::registration(&portal, &visitor, &n)) {
            Ok(r) => r,
            Err(e) => return refused(&page, e),
        };
    let body = html! {
        p { "Mail from " strong { (display(&r.network)) } " (" (r.purpose) ") will no longer be relayed outside the organisation. This cannot be undone; the system would need a new request." }
        form method="post" action="/relays/delete" {
            (csrf_field(&page.csrf))
            input type="hidden" name="network" value=(r.network.to_string());
            div.actions {
                button.danger #confirm-delete type="submit" { "Delete the registration" }
                a href="/relays" { "Keep it" }
            }
        }
    };
    layout(
        &page,
        &format!("Delete {}?", display(&r.network)),
        None,
        body,
    )
    .into_response()
}

/// `POST /relays/delete`.
pub async fn delete(
    State(portal): State<Arc<Portal>>,
    SignedIn(page, visitor): SignedIn,
    Posted(which): Posted<Which>,
) -> Response {
    let done = match ops::network(&which.network) {
        Ok(network) => ops::delete(&portal, &page.origin(&visitor), network).await,
        Err(e) => Err(e),
    };
    then(&page, done, "/relays?done=deleted")
}
