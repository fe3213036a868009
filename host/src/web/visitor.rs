//! Who is asking, and whether a form really comes from the portal's own page.
//!
//! - A signed-in browser carries the session cookie (`HttpOnly`, `Secure`,
//!   `SameSite=Strict`, for the session's lifetime).
//! - Behind a single sign-on proxy (Shibboleth, an OIDC proxy), the proxy names the user
//!   in `[web] user_header`; that header is believed only from `[web] trusted_proxies`.
//! - The API's callers send `Authorization: Bearer TOKEN` instead (see `super::api`).
//!
//! Every form carries a CSRF token equal to the visitor's CSRF cookie (set on the first
//! page); a form posted from elsewhere cannot know it. The cookies are `__Host-` cookies,
//! which a neighbouring site of the same organisation (`people.example.edu`) cannot set
//! for the portal's host; and a form whose browser says it comes from another origin
//! (`Sec-Fetch-Site`, `Origin`) is refused before its token is even looked at.

use super::Portal;
use super::accounts::Role;
use super::listener::Peer;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::sync::Arc;

pub const SESSION_COOKIE: &str = "__Host-sluice_session";
pub const CSRF_COOKIE: &str = "__Host-sluice_csrf";

/// A signed-in person or tool.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The e-mail address signed in with, the user name, the proxy's user, or a token's name.
    pub identity: String,
    pub role: Role,
    /// The session cookie's secret, when signed in by cookie (to sign out).
    pub session: Option<String>,
}

impl Visitor {
    pub fn is_postmaster(&self) -> bool {
        self.role == Role::Postmaster
    }

    /// Is `admin` (a registration's admin of record) this visitor?
    pub fn is(&self, admin: &str) -> bool {
        admin.trim().eq_ignore_ascii_case(&self.identity)
    }
}

/// What every page knows about its request: the visitor if signed in, the CSRF token for
/// its forms, and the client's address.
#[derive(Debug, Clone)]
pub struct Page {
    pub visitor: Option<Visitor>,
    pub csrf: String,
    /// The client: the peer, or the address a trusted proxy says it forwards for.
    pub client: IpAddr,
}

impl Page {
    /// Where a change `visitor` makes through this page comes from, for the history.
    pub fn origin<'a>(&self, visitor: &'a Visitor) -> super::ops::Origin<'a> {
        super::ops::Origin {
            visitor,
            via: "portal",
            client: self.client,
        }
    }
}

/// A page only for the signed-in; others are sent to sign in.
pub struct SignedIn(pub Page, pub Visitor);

/// A page only for postmasters.
pub struct PostmasterOnly(pub Page, pub Visitor);

/// The CSRF token the middleware found or made for this request.
#[derive(Clone)]
struct CsrfToken(String);

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the portal: never readable by scripts, never sent from
/// another site, only over HTTPS (browsers treat loopback as secure, so it works there too).
pub fn set_cookie(name: &str, value: &str, max_age: std::time::Duration) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        max_age.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn trusted_proxy(portal: &Portal, peer: &Peer) -> bool {
    let ip = peer.addr.ip().to_canonical();
    portal
        .config()
        .web
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&ip))
}

/// The client's address: from a trusted proxy, the nearest `X-Forwarded-For` hop that is
/// not itself a trusted proxy (every `X-Forwarded-For` field read, right to left: what a
/// client wrote itself is on the left, and never reached); else the peer.
fn client(portal: &Portal, peer: &Peer, headers: &HeaderMap) -> IpAddr {
    let peer_ip = peer.addr.ip().to_canonical();
    if !trusted_proxy(portal, peer) {
        return peer_ip;
    }
    let config = portal.config();
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return peer_ip;
        };
        let ip = ip.to_canonical();
        if !config.web.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return ip;
        }
    }
    peer_ip
}

/// Who the request's credentials say it is, if anyone.
async fn visitor(portal: &Arc<Portal>, peer: &Peer, headers: &HeaderMap) -> Option<Visitor> {
    if let Some(name) = portal.config().web.user_header.as_deref()
        && trusted_proxy(portal, peer)
        // One value, or none believed: two are a client's own added to the proxy's.
        && headers.get_all(name).iter().count() == 1
        && let Some(user) = headers.get(name).and_then(|v| v.to_str().ok())
        && !user.trim().is_empty()
    {
        let user = user.trim().to_string();
        let lookup = (portal.clone(), user.clone());
        let role = blocking(move || lookup.0.auth.users().role_of(&lookup.1)).await;
        return Some(Visitor {
            identity: user,
            role: match role {
                Some(crate::auth::users::Role::Postmaster) => Role::Postmaster,
                _ => Role::Department,
            },
            session: None,
        });
    }
    let token = cookie(headers, SESSION_COOKIE)?.to_string();
    let lookup = (portal.clone(), token.clone());
    let (identity, role) = blocking(move || {
        let Some((identity, role)) = lookup.0.accounts.session(&lookup.1)? else {
            return Ok(None);
        };
        // A postmaster removed or demoted since signing in is one no longer.
        if role == Role::Postmaster
            && lookup.0.auth.users().role_of(&identity)?
                != Some(crate::auth::users::Role::Postmaster)
        {
            return Ok(None);
        }
        Ok(Some((identity, role)))
    })
    .await?;
    Some(Visitor {
        identity,
        role,
        session: Some(token),
    })
}

/// Runs a store call off the async workers; a failure is logged and counts as nothing
/// found (the visitor is asked to sign in again, never let in).
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<Option<T>> + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(target: "sluice::web", "portal: store: {e:#}");
            None
        }
        Err(e) => {
            tracing::error!(target: "sluice::web", "portal: {e}");
            None
        }
    }
}

impl FromRequestParts<Arc<Portal>> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Page, Response> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .copied()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let csrf = parts
            .extensions
            .get::<CsrfToken>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        Ok(Page {
            visitor: visitor(portal, &peer, &parts.headers).await,
            csrf,
            client: client(portal, &peer, &parts.headers),
        })
    }
}

impl FromRequestParts<Arc<Portal>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Self, Response> {
        let page = Page::from_request_parts(parts, portal).await?;
        match page.visitor.clone() {
            Some(visitor) => Ok(SignedIn(page, visitor)),
            None => Err(Redirect::to("/signin").into_response()),
        }
    }
}

impl FromRequestParts<Arc<Portal>> for PostmasterOnly {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Self, Response> {
        let SignedIn(page, visitor) = SignedIn::from_request_parts(parts, portal).await?;
        if !visitor.is_postmaster() {
            return Err(super::pages::forbidden(&page));
        }
        Ok(PostmasterOnly(page, visitor))
    }
}

/// A form posted from the portal's own page: its fields, after the CSRF check.
pub struct Posted<T>(pub T);

#[derive(serde::Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<Arc<Portal>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, portal: &Arc<Portal>) -> Result<Self, Response> {
        let expected = request
            .extensions()
            .get::<CsrfToken>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let had_cookie = cookie(request.headers(), CSRF_COOKIE).is_some();
        if let Some(elsewhere) = cross_origin(request.headers()) {
            tracing::warn!(target: "sluice::web", "portal: form refused: posted from {elsewhere}");
            return Err((
                StatusCode::FORBIDDEN,
                "This form was sent from another site. Use the portal's own page.\n",
            )
                .into_response());
        }
        let axum::Form(posted) = axum::Form::<WithCsrf<T>>::from_request(request, portal)
            .await
            .map_err(|e| (e.status(), format!("{}\n", e.body_text())).into_response())?;
        if !had_cookie || expected.is_empty() || !same(&posted.csrf, &expected) {
            tracing::warn!(target: "sluice::web", "portal: form refused: missing or wrong CSRF token");
            return Err((
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the portal. Go back, reload the page and try again.\n",
            )
                .into_response());
        }
        Ok(Posted(posted.form))
    }
}

/// Where a request says it comes from, when that is not the portal's own origin: the
/// browser's `Sec-Fetch-Site` (anything but `same-origin`, or `none` for what a person
/// typed), else an `Origin` whose host is not the request's `Host`.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return (site != "same-origin" && site != "none").then(|| format!("a {site} page"));
    }
    let origin = header("origin")?;
    let host = header("host").unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    (!origin_host.eq_ignore_ascii_case(host)).then(|| origin.to_string())
}

/// Around every request: the CSRF cookie (made if missing), and the headers that keep
/// pages from being framed, sniffed, cached or leaking a sign-in link in a Referer.
pub async fn protect(mut request: Request, next: Next) -> Response {
    let existing = cookie(request.headers(), CSRF_COOKIE)
        .filter(|v| {
            v.len() >= 32
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_string);
    let fresh = match existing {
        Some(_) => None,
        None => super::accounts::secret().ok(),
    };
    let token = existing
        .clone()
        .or_else(|| fresh.clone())
        .unwrap_or_default();
    request.extensions_mut().insert(CsrfToken(token));
    let is_get = request.method() == Method::GET;
    let tls = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|c| c.0.tls);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if tls {
        // Served over HTTPS: browsers are to come back only that way.
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if let Some(fresh) = fresh.filter(|_| is_get) {
        headers.append(
            header::SET_COOKIE,
            set_cookie(
                CSRF_COOKIE,
                &fresh,
                std::time::Duration::from_secs(24 * 3600),
            ),
        );
    }
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
