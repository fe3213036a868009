//! Signing in and out.
//!
//! - A one-time link, mailed through the relay's own queue to an address in `[web]
//!   domains`; it lives 15 minutes and works once. Opening it shows a button (a POST), so
//!   a mail scanner that fetches links does not use it up. Whatever address is asked for,
//!   the page says the same thing: nobody learns which addresses are known or allowed.
//! - A postmaster's name and password (`sluice user add NAME --role postmaster`), counted
//!   in the same failures and lockouts as SMTP AUTH.
//! - Single sign-on: see [`super::visitor`]; nothing to do here.

use super::accounts::Role;
use super::pages::{csrf_field, flash, layout, status};
use super::visitor::{CSRF_COOKIE, Page, Posted, SESSION_COOKIE, set_cookie};
use super::{LinkLimit, Portal};
use crate::auth::Outcome;
use crate::registry::notice::Notice;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest address a link is sent to (RFC 5321's path, less its brackets).
const MAX_ADDRESS: usize = 254;

/// `/`: where a visitor starts.
pub async fn home(page: Page) -> Redirect {
    match &page.visitor {
        Some(v) if v.is_postmaster() => Redirect::to("/review"),
        Some(_) => Redirect::to("/relays"),
        None => Redirect::to("/signin"),
    }
}

/// `GET /signin`.
pub async fn page(page: Page, Query(done): Query<super::pages::Done>) -> Response {
    signin_page(&page, flash(done.done.as_deref()), None).into_response()
}

fn signin_page(page: &Page, flash: Option<&str>, problem: Option<&str>) -> maud::Markup {
    layout(
        page,
        "Sign in",
        flash,
        html! {
            section.card aria-labelledby="by-mail" {
                h2 #by-mail { "With your e-mail address" }
                p { "We send a link to your address. It works once, for 15 minutes." }
                form #signin-link method="post" action="/signin" {
                    (csrf_field(&page.csrf))
                    div.field {
                        label for="email" { "Your e-mail address" }
                        input #email name="email" type="email" autocomplete="email" required;
                    }
                    button #send-link type="submit" { "Send me a sign-in link" }
                }
            }
            section.card aria-labelledby="by-password" {
                h2 #by-password { "Postmasters" }
                @if let Some(problem) = problem {
                    p.error role="alert" { (problem) }
                }
                form #signin-password method="post" action="/signin/password" {
                    (csrf_field(&page.csrf))
                    div.field {
                        label for="name" { "User name" }
                        input #name name="name" type="text" autocomplete="username" required;
                    }
                    div.field {
                        label for="password" { "Password" }
                        input #password name="password" type="password" autocomplete="current-password" required;
                    }
                    button #password-signin type="submit" { "Sign in" }
                }
            }
        },
    )
}

#[derive(serde::Deserialize)]
pub struct LinkRequest {
    #[serde(default)]
    email: String,
}

/// Whether `address` is one of the organisation's (in `domains` or a subdomain).
fn in_domains(address: &str, domains: &[String]) -> bool {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let domain = domain.to_ascii_lowercase();
    domains.iter().any(|d| {
        let d = d.trim_start_matches('.').to_ascii_lowercase();
        domain == d || domain.ends_with(&format!(".{d}"))
    })
}

/// `POST /signin`: mails a link, if the address may have one; the same page either way.
pub async fn send_link(
    State(portal): State<Arc<Portal>>,
    page: Page,
    Posted(form): Posted<LinkRequest>,
) -> Response {
    let address = form.email.trim().to_string();
    let config = portal.config();
    // Only an address is counted (and remembered): anything else gets the same page and
    // nothing more.
    let is_address =
        address.len() <= MAX_ADDRESS && crate::registry::requests::check_contact(&address).is_ok();
    let limited = if is_address {
        let mut links = portal.links.lock().unwrap_or_else(|e| e.into_inner());
        links.count(&address, page.client, Instant::now())
    } else {
        Err(LinkLimit::Address)
    };
    match limited {
        Err(LinkLimit::Client) => {
            tracing::warn!(target: "sluice::web", client = %page.client, "portal: sign-in links refused: too many from this client");
            return status(
                &page,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-in requests",
                "Too many sign-in links were asked for from your network. Wait a quarter of an hour and try again.",
            );
        }
        Err(LinkLimit::Address) => {
            tracing::warn!(target: "sluice::web", client = %page.client, "portal: sign-in link not sent: too many for one address");
        }
        Ok(())
            if crate::registry::requests::check_contact(&address).is_ok()
                && in_domains(&address, &config.web.domains) =>
        {
            let link_base = format!("{}/signin/link?token=", portal.base_url());
            let hostname = config.hostname.clone();
            let recipient = address.clone();
            let mail = move |token: &str| Notice {
                recipient: recipient.clone(),
                subject: format!("Sign in to the mail relay portal at {hostname}"),
                body: format!(
                    "Someone (we hope you) asked to sign in to the mail relay portal at {hostname}.\n\n\
                     Open this link within 15 minutes to sign in; it works once:\n\n\
                     {link_base}{token}\n\n\
                     If you did not ask for it, ignore this message.\n"
                ),
            };
            let accounts = portal.clone();
            let to = address.clone();
            let written =
                tokio::task::spawn_blocking(move || accounts.accounts.new_link(&to, mail)).await;
            match written {
                Ok(Ok(())) => {
                    let _ = portal.registry.catch_up(&portal.queue).await;
                    tracing::info!(target: "sluice::web", client = %page.client, "portal: sign-in link sent");
                }
                Ok(Err(e)) => {
                    tracing::error!(target: "sluice::web", "portal: cannot write a sign-in link: {e:#}")
                }
                Err(e) => tracing::error!(target: "sluice::web", "portal: {e}"),
            }
        }
        Ok(()) => {
            tracing::info!(target: "sluice::web", client = %page.client, "portal: sign-in link not sent: not an address of web.domains");
        }
    }
    layout(
        &page,
        "Check your mail",
        None,
        html! {
            p { "If " strong { (address) } " is an address of the organisation, a sign-in link is on its way to it. It works once, for 15 minutes." }
            p { a href="/signin" { "Back to sign-in" } }
        },
    )
    .into_response()
}

#[derive(serde::Deserialize)]
pub struct LinkToken {
    #[serde(default)]
    token: String,
}

/// `GET /signin/link?token=…`: a button that signs in (the link itself changes nothing).
pub async fn confirm_page(page: Page, Query(link): Query<LinkToken>) -> Response {
    layout(
        &page,
        "Sign in",
        None,
        html! {
            form method="post" action="/signin/link" {
                (csrf_field(&page.csrf))
                input type="hidden" name="token" value=(link.token);
                p { "Sign in to the mail relay portal." }
                button #confirm-signin type="submit" { "Sign in" }
            }
        },
    )
    .into_response()
}

/// `POST /signin/link`: uses the link up and opens a session.
pub async fn use_link(
    State(portal): State<Arc<Portal>>,
    page: Page,
    Posted(link): Posted<LinkToken>,
) -> Response {
    let accounts = portal.clone();
    let address = super::visitor::blocking(move || accounts.accounts.use_link(&link.token)).await;
    let Some(address) = address else {
        tracing::info!(target: "sluice::web", client = %page.client, "portal: sign-in refused: link unknown, used or expired");
        return status(
            &page,
            StatusCode::BAD_REQUEST,
            "This link does not work",
            "Sign-in links work once, for 15 minutes. Ask for a new one on the sign-in page.",
        );
    };
    signed_in(&portal, &page, address, Role::Department, "/relays").await
}

#[derive(serde::Deserialize)]
pub struct Password {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

/// `POST /signin/password`: a postmaster's name and password.
pub async fn password(
    State(portal): State<Arc<Portal>>,
    page: Page,
    Posted(form): Posted<Password>,
) -> Response {
    let Ok(_permit) = portal.auth.checking().acquire_owned().await else {
        return status(
            &page,
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The relay is stopping.",
        );
    };
    let (auth, client, name) = (portal.auth.clone(), page.client, form.name.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        auth.check_as(
            client,
            &name,
            &form.password,
            crate::auth::users::Role::Postmaster,
        )
    })
    .await;
    match outcome {
        Ok(Outcome::Authenticated) => {
            tracing::info!(target: "sluice::web", client = %page.client, user = %form.name, "portal: postmaster signed in");
            signed_in(&portal, &page, form.name, Role::Postmaster, "/review").await
        }
        Ok(Outcome::Failed { delay, .. }) => {
            tracing::warn!(target: "sluice::web", client = %page.client, "portal: postmaster sign-in failed");
            tokio::time::sleep(delay).await;
            let body = signin_page(
                &page,
                None,
                Some("That name and password do not match a postmaster."),
            );
            (StatusCode::UNAUTHORIZED, body).into_response()
        }
        Ok(Outcome::Locked(_)) => {
            tracing::warn!(target: "sluice::web", client = %page.client, "portal: postmaster sign-in refused: locked out");
            let body = signin_page(
                &page,
                None,
                Some("Too many failed attempts: try again later."),
            );
            (StatusCode::TOO_MANY_REQUESTS, body).into_response()
        }
        _ => status(
            &page,
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again shortly",
            "Sign-in is unavailable.",
        ),
    }
}

/// Opens a session for `identity` and goes to `next`.
async fn signed_in(
    portal: &Arc<Portal>,
    page: &Page,
    identity: String,
    role: Role,
    next: &str,
) -> Response {
    let lifetime = portal.config().web.session_lifetime;
    let accounts = portal.clone();
    let who = identity.clone();
    let token = super::visitor::blocking(move || {
        accounts
            .accounts
            .new_session(&who, role, lifetime)
            .map(Some)
    })
    .await;
    let Some(token) = token else {
        return status(
            page,
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again shortly",
            "Sign-in is unavailable.",
        );
    };
    tracing::info!(target: "sluice::web", client = %page.client, identity = %identity, role = role.as_str(), "portal: signed in");
    let mut response = Redirect::to(next).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, lifetime),
    );
    // A new CSRF token with the new session: one learnt before signing in is worth nothing.
    if let Ok(fresh) = super::accounts::secret() {
        headers.append(
            header::SET_COOKIE,
            set_cookie(CSRF_COOKIE, &fresh, Duration::from_secs(24 * 3600)),
        );
    }
    response
}

#[derive(serde::Deserialize)]
pub struct Nothing {}

/// `POST /signout`.
pub async fn signout(
    State(portal): State<Arc<Portal>>,
    page: Page,
    Posted(_): Posted<Nothing>,
) -> Response {
    if let Some(token) = page.visitor.and_then(|v| v.session) {
        let accounts = portal.clone();
        super::visitor::blocking(move || accounts.accounts.end_session(&token).map(Some)).await;
    }
    let mut headers = HeaderMap::new();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Duration::ZERO),
    );
    headers.insert(
        header::LOCATION,
        HeaderValue::from_static("/signin?done=signedout"),
    );
    (StatusCode::SEE_OTHER, headers).into_response()
}

#[cfg(test)]
mod tests {
    use super::in_domains;

    #[test]
    fn links_go_only_to_the_organisations_domains() {
        let domains = ["example.edu".to_string()];
        assert!(in_domains("jdoe@example.edu", &domains));
        assert!(in_domains("jdoe@Physics.Example.EDU", &domains));
        assert!(!in_domains("jdoe@notexample.edu", &domains));
        assert!(!in_domains("jdoe@example.edu.evil.test", &domains));
        assert!(!in_domains("example.edu", &domains));
    }
}
