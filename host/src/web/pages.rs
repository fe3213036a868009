//! The frame every page shares (header, navigation, sign-out), the style sheet, and the
//! small pieces pages are made of. maud escapes everything interpolated unless told
//! otherwise, and nothing here tells it otherwise.

use super::ops::Refused;
use super::visitor::{Page, Visitor};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// The style sheet, compiled into the binary.
const STYLE: &str = include_str!("style.css");

pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

/// A whole page: `title` in the tab and the heading, `main` below the navigation.
pub fn layout(page: &Page, title: &str, flash: Option<&str>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Mail relay" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "Mail relay" }
                    @if let Some(visitor) = &page.visitor {
                        (nav(visitor, &page.csrf))
                    }
                }
                main #main {
                    h1 { (title) }
                    @if let Some(flash) = flash {
                        p.flash role="status" { (flash) }
                    }
                    (main)
                }
            }
        }
    }
}

fn nav(visitor: &Visitor, csrf: &str) -> Markup {
    html! {
        nav aria-label="Portal" {
            ul {
                li { a href="/relays" { "List Relays" } }
                li { a href="/requests/new" { "Request relaying" } }
                @if visitor.is_postmaster() {
                    li { a href="/review" { "Review" } }
                    li { a href="/registry" { "Registry" } }
                    li { a href="/history" { "History" } }
                    li { a href="/overview" { "Overview" } }
                }
            }
            form.signout method="post" action="/signout" {
                (csrf_field(csrf))
                span.who { (visitor.identity) }
                button #signout type="submit" { "Sign out" }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A labelled text field; `problems` are shown under it and tie to it for screen readers.
pub fn field(
    id: &str,
    label: &str,
    value: &str,
    hint: Option<&str>,
    problems: &[String],
) -> Markup {
    let described = format!("{id}-help");
    html! {
        div.field {
            label for=(id) { (label) }
            @if let Some(hint) = hint {
                p.hint #(described) { (hint) }
            }
            input #(id) name=(id) type="text" value=(value) aria-describedby=[hint.map(|_| &described)]
                aria-invalid=[(!problems.is_empty()).then_some("true")];
            @for problem in problems {
                p.error { (label) ": " (problem) }
            }
        }
    }
}

/// A date from Unix seconds (UTC).
pub fn day(unix: u64) -> String {
    crate::registry::notice::date_as(unix, "%Y-%m-%d")
}

/// A date and time from Unix seconds (UTC).
pub fn moment(unix: u64) -> String {
    crate::registry::notice::date_as(unix, "%Y-%m-%d %H:%M UTC")
}

/// A page with a status other than 200.
pub fn status(page: &Page, code: StatusCode, title: &str, text: &str) -> Response {
    let body = layout(
        page,
        title,
        None,
        html! { p { (text) } p { a href="/" { "Back to the portal" } } },
    );
    (code, body).into_response()
}

pub fn forbidden(page: &Page) -> Response {
    status(
        page,
        StatusCode::FORBIDDEN,
        "Not for you",
        "This page is for postmasters.",
    )
}

pub async fn not_found(page: Page) -> Response {
    status(
        &page,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing here, or nothing you may see.",
    )
}

/// The page for what the portal refused to do.
pub fn refused(page: &Page, refused: Refused) -> Response {
    match refused {
        Refused::NotFound => status(
            page,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing here, or nothing you may see.",
        ),
        Refused::Forbidden => forbidden(page),
        Refused::Unavailable => status(
            page,
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again shortly",
            &refused.to_string(),
        ),
        Refused::Invalid(_) | Refused::Rule(_) => status(
            page,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not done",
            &refused.to_string(),
        ),
    }
}

/// After a change: on to `next` when it was made, or the page saying why not.
pub fn then<T>(page: &Page, done: Result<T, Refused>, next: &str) -> Response {
    match done {
        Ok(_) => axum::response::Redirect::to(next).into_response(),
        Err(e) => refused(page, e),
    }
}

/// The flash code a redirect carries (`?done=...`).
#[derive(serde::Deserialize)]
pub struct Done {
    pub done: Option<String>,
}

/// The words of a flash code a redirect carries (`?done=...`): fixed texts, so a link
/// cannot make the portal say something of its choosing.
pub fn flash(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "requested" => "Your request is with the postmaster. You will get mail when it is decided.",
        "answered" => "Your answer is with the postmaster.",
        "changed" => "The registration is changed.",
        "transferred" => "The registration has a new admin of record.",
        "deleted" => "The registration is deleted; mail from it is no longer relayed.",
        "approved" => "Approved: the address is registered and the confirmation is on its way.",
        "denied" => "Denied: the requester is told why.",
        "asked" => "Your question is on its way to the requester.",
        "blocked" => "Blocked: the address is refused from now on.",
        "unblocked" => "The block is lifted.",
        "signedout" => "You are signed out.",
        _ => return None,
    })
}
