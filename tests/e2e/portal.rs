//! The registration portal through the real relay: sign-in links that arrive at the test's
//! sink, requests, the postmaster's review, "List Relays", the API with bearer tokens, and
//! what a hostile visitor tries (script in every field, another's registration, a forged
//! form, a flood of sign-in links). Mail from the registered 127.x address is sent through
//! the relay to show what each change means for relaying. The same flow in a real browser
//! is in `portal_browser.rs`.

use crate::registry::{CAMPUS_CHAIN, send_from};
use crate::support::http::{Browser, Response};
use crate::support::relay::RelayOptions;
use crate::support::{Conn, PATIENCE, Relay, Sink, free_port, python};
use std::net::SocketAddr;

/// A campus machine (inside 127.0.0.0/16, outside the workstations 127.0.9.0/24).
const PRINTER: &str = "127.0.3.7";
const OUTSIDE: &str = "someone@gmail.com";
const POSTMASTER: &str = "pm";
const PASSWORD: &str = "review all the things";

pub struct Portal {
    pub relay: Relay,
    pub sink: Sink,
    pub web: SocketAddr,
}

/// A relay with the campus chain and the portal on a free port; `extra` adds to `[web]`.
pub async fn portal(extra: &str) -> Portal {
    let sink = Sink::start().await;
    let port = free_port();
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(CAMPUS_CHAIN.into()),
        extra: format!(
            "[registry]\ncheck_interval = \"200ms\"\n\
             [web]\naddr = \"127.0.0.1:{port}\"\ndomains = [\"example.edu\"]\n\
             url = \"http://localhost:{port}\"\n{extra}"
        ),
        ..Default::default()
    })
    .await;
    let added = relay.command_with_input(
        &["user", "add", POSTMASTER, "--role", "postmaster"],
        &format!("{PASSWORD}\n"),
    );
    assert!(added.status.success(), "{added:?}");
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    Portal { relay, sink, web }
}

impl Portal {
    /// The next message the sink receives for `to` after `seen` messages, as text.
    pub async fn mail_to(&self, to: &str, seen: usize) -> String {
        self.mail_saying(to, seen, "").await
    }

    /// The `n`th message (from 0) the sink received for `to`, once it has arrived.
    pub async fn nth_mail_to(&self, to: &str, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let messages = self.sink.messages();
            if let Some(m) = messages
                .iter()
                .filter(|m| m.recipients.iter().any(|r| r == to))
                .nth(n)
            {
                return String::from_utf8_lossy(&m.data).into_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message {n} to {to} arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The next message for `to` after `seen` messages whose text contains `needle`.
    pub async fn mail_saying(&self, to: &str, seen: usize, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let messages = self.sink.messages();
            if let Some(m) = messages[seen.min(messages.len())..].iter().find(|m| {
                m.recipients.iter().any(|r| r == to)
                    && String::from_utf8_lossy(&m.data).contains(needle)
            }) {
                return String::from_utf8_lossy(&m.data).into_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no mail to {to} arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A browser signed in by a mailed link as `address`.
    pub async fn sign_in(&self, address: &str) -> Browser {
        let mut browser = Browser::new(self.web);
        browser.get("/signin").await;
        let seen = self.sink.messages().len();
        let asked = browser.post("/signin", &[("email", address)]).await;
        assert_eq!(asked.status, 200, "{}", asked.body);
        let mail = self.mail_saying(address, seen, "/signin/link?token=").await;
        let token = link_token(&mail);
        let confirm = browser.get(&format!("/signin/link?token={token}")).await;
        assert!(confirm.body.contains("confirm-signin"), "{}", confirm.body);
        let signed = browser.post("/signin/link", &[("token", &token)]).await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        assert_eq!(signed.location(), Some("/relays"));
        browser
    }

    /// A browser signed in as the postmaster, with name and password.
    pub async fn postmaster(&self) -> Browser {
        let mut browser = Browser::new(self.web);
        browser.get("/signin").await;
        let signed = browser
            .post(
                "/signin/password",
                &[("name", POSTMASTER), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        assert_eq!(signed.location(), Some("/review"));
        browser
    }
}

/// The token of the sign-in link in a mail.
pub fn link_token(mail: &str) -> String {
    let at = mail
        .find("/signin/link?token=")
        .unwrap_or_else(|| panic!("no sign-in link in:\n{mail}"));
    mail[at + "/signin/link?token=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// The request form's fields for `network`, with `extra` replacing any of them.
fn request_fields<'a>(network: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("network", network),
        ("hostname", "printer-3.physics.example.edu"),
        ("department", "Physics"),
        ("admin", "jdoe@example.edu"),
        ("contact", "jdoe@example.edu"),
        ("purpose", "Scan to e-mail from the copier"),
        ("volume", "low"),
        ("senders", "copier@physics.example.edu"),
        ("terms", "accepted"),
    ];
    for (name, value) in extra {
        match fields.iter_mut().find(|(n, _)| n == name) {
            Some(field) => field.1 = value,
            None => fields.push((name, value)),
        }
    }
    fields
}

/// The id of the newest request in a page listing requests.
fn request_id(page: &Response) -> String {
    let at = page
        .body
        .find("data-request-id=\"")
        .unwrap_or_else(|| panic!("no request listed:\n{}", page.body));
    page.body[at + 17..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

#[tokio::test]
async fn a_request_is_questioned_answered_approved_and_its_registration_deleted() {
    let p = portal("").await;
    let mut dept = p.sign_in("jdoe@example.edu").await;
    assert_eq!(send_from(&p.relay, PRINTER, &[OUTSIDE]).await, [550]);

    let form = dept.get("/requests/new").await;
    assert!(
        form.body.contains("The relay is only for systems"),
        "the terms are shown"
    );
    assert!(
        form.body.contains("value=\"jdoe@example.edu\""),
        "the admin is the signed-in address"
    );
    let without_terms: Vec<_> = request_fields(PRINTER, &[])
        .into_iter()
        .filter(|(n, _)| *n != "terms")
        .collect();
    let refused = dept.post("/requests", &without_terms).await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("accept the terms of use"),
        "{}",
        refused.body
    );

    let sent = dept.post("/requests", &request_fields(PRINTER, &[])).await;
    assert_eq!(sent.location(), Some("/relays?done=requested"));
    let relays = dept.get("/relays").await;
    let id = request_id(&relays);
    assert!(relays.body.contains(">pending<"), "{}", relays.body);

    // The postmaster asks; the question is mailed, and the requester answers.
    let mut pm = p.postmaster().await;
    let queue = pm.get("/review").await;
    assert!(
        queue.body.contains(&format!("/review/{id}")),
        "{}",
        queue.body
    );
    let seen = p.sink.messages().len();
    let asked = pm
        .post(
            &format!("/review/{id}"),
            &[
                ("decision", "ask"),
                ("text", "Which floor is the copier on?"),
            ],
        )
        .await;
    assert_eq!(asked.location(), Some("/review?done=asked"));
    let question = p.mail_to("jdoe@example.edu", seen).await;
    assert!(
        question.contains("Which floor is the copier on?"),
        "{question}"
    );
    let approved_early = pm
        .post(&format!("/review/{id}"), &[("decision", "approve")])
        .await;
    assert_eq!(approved_early.status, 422, "waits for the answer");
    let answer = dept
        .post(
            &format!("/requests/{id}"),
            &request_fields(
                PRINTER,
                &[("purpose", "Scan to e-mail from the copier on floor 3")],
            ),
        )
        .await;
    assert_eq!(answer.location(), Some("/relays?done=answered"));

    // Approved: registered, confirmed by mail, and relayed.
    let seen = p.sink.messages().len();
    let approved = pm
        .post(&format!("/review/{id}"), &[("decision", "approve")])
        .await;
    assert_eq!(approved.location(), Some("/review?done=approved"));
    let confirmation = p.mail_to("jdoe@example.edu", seen).await;
    assert!(
        confirmation.contains(PRINTER) && confirmation.contains("may now relay"),
        "{confirmation}"
    );
    assert_eq!(send_from(&p.relay, PRINTER, &[OUTSIDE]).await, [250, 250]);

    // The overview counts it, and the refusal before.
    let overview = pm.get("/overview").await;
    assert!(
        overview.body.contains("id=\"accepted-today\">1<"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("rcpt 5xx"), "{}", overview.body);
    assert!(
        overview.body.contains("127.0.3.7: 1"),
        "the busiest senders: {}",
        overview.body
    );

    // "List Relays" shows it with its expiry; the admin of record deletes it.
    let relays = dept.get("/relays").await;
    assert!(
        relays.body.contains("data-network=\"127.0.3.7/32\""),
        "{}",
        relays.body
    );
    assert!(relays.body.contains(">approved<"));
    let confirm = dept.get("/relays/delete?network=127.0.3.7/32").await;
    assert!(confirm.body.contains("confirm-delete"), "{}", confirm.body);
    let deleted = dept
        .post("/relays/delete", &[("network", "127.0.3.7/32")])
        .await;
    assert_eq!(deleted.location(), Some("/relays?done=deleted"));
    assert_eq!(send_from(&p.relay, PRINTER, &[OUTSIDE]).await, [550]);

    // Every step is in the history, with who and from where; the command line shows it too.
    let history = pm.get("/history?network=127.0.3.7").await;
    for action in ["request", "ask", "answer", "register", "approve", "remove"] {
        assert!(
            history.body.contains(&format!(">{action}</td>")),
            "{action}: {}",
            history.body
        );
    }
    assert!(
        history.body.contains("portal 127.0.0.1"),
        "{}",
        history.body
    );
    let cli = p.relay.command(&["registry", "history", PRINTER]);
    let cli = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.contains("jdoe@example.edu") && cli.contains("remove"),
        "{cli}"
    );

    // A second request, denied with a reason that is mailed.
    dept.post("/requests", &request_fields("127.0.3.8", &[]))
        .await;
    let id = request_id(&dept.get("/relays").await);
    let seen = p.sink.messages().len();
    pm.post(
        &format!("/review/{id}"),
        &[
            ("decision", "deny"),
            ("text", "Use the authenticated service"),
        ],
    )
    .await;
    let denial = p.mail_to("jdoe@example.edu", seen).await;
    assert!(denial.contains("Use the authenticated service"), "{denial}");
    assert!(dept.get("/relays").await.body.contains(">denied<"));
}

/// Script in every text field, shown back on every page and in the CSV.
const SCRIPT: &str = "<script>alert(1)</script>";

#[tokio::test]
async fn everything_shown_is_escaped_and_every_form_needs_its_csrf_token() {
    let p = portal("").await;
    let mut dept = p.sign_in("jdoe@example.edu").await;
    let hostile = format!("x{SCRIPT}\"'><img src=x onerror=alert(1)>");
    let refused = dept
        .post(
            "/requests",
            &request_fields(&hostile, &[("contact", &hostile), ("senders", &hostile)]),
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(!refused.body.contains("<script>alert"), "{}", refused.body);
    assert!(!refused.body.contains("<img src=x"), "{}", refused.body);
    assert!(
        refused.body.contains("&lt;script&gt;"),
        "shown, escaped: {}",
        refused.body
    );

    let sent = dept
        .post(
            "/requests",
            &request_fields(
                PRINTER,
                &[
                    ("hostname", &hostile),
                    ("department", &hostile),
                    ("admin", "jdoe@example.edu"),
                    ("purpose", &hostile),
                ],
            ),
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let mut pm = p.postmaster().await;
    let id = request_id(&pm.get("/review").await);
    pm.post(&format!("/review/{id}"), &[("decision", "approve")])
        .await;
    for page in [
        dept.get("/relays").await,
        dept.get(&format!("/requests/{id}")).await,
        pm.get("/review").await,
        pm.get(&format!("/review/{id}")).await,
        pm.get("/registry").await,
        pm.get(&format!(
            "/registry?q={}",
            crate::support::http::encode(&hostile)
        ))
        .await,
        pm.get("/history").await,
        dept.get(&format!("/relays/edit?network={PRINTER}")).await,
    ] {
        assert!(page.status < 400, "{}", page.body);
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(!page.body.contains("<img src=x"), "{}", page.body);
    }
    let csv = pm.get("/registry.csv").await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.body.contains("\"x<script>alert(1)</script>\"\"'>"),
        "CSV quoting: {}",
        csv.body
    );

    // Without the token, with another, or with no cookie: refused, and nothing changed.
    let mut forged = Browser::new(p.web);
    forged.cookies = dept.cookies.clone();
    for fields in [
        vec![("network", "127.0.3.7/32")],
        vec![
            ("network", "127.0.3.7/32"),
            ("csrf", "not-the-token-not-the-token-not-the"),
        ],
    ] {
        let r = forged.post_raw("/relays/delete", &fields).await;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    let token = dept.csrf();
    forged.cookies.remove("__Host-sluice_csrf");
    let r = forged
        .post_raw(
            "/relays/delete",
            &[("network", "127.0.3.7/32"), ("csrf", &token)],
        )
        .await;
    assert_eq!(r.status, 403, "a token without its cookie");
    assert_eq!(
        send_from(&p.relay, PRINTER, &[OUTSIDE]).await,
        [250, 250],
        "still registered"
    );

    // A form the browser says comes from another site, even a neighbour in the same
    // organisation, and even with the right token: refused.
    let body = format!("csrf={}&network=127.0.3.7%2F32", dept.csrf());
    for header in [
        ("Sec-Fetch-Site", "same-site"),
        ("Origin", "https://people.example.edu"),
    ] {
        let headers = [
            header,
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let r = dept
            .request("POST", "/relays/delete", &headers, Some(body.as_bytes()))
            .await;
        assert_eq!(r.status, 403, "{header:?}: {}", r.body);
    }
    assert_eq!(
        send_from(&p.relay, PRINTER, &[OUTSIDE]).await,
        [250, 250],
        "still registered"
    );

    // The pages' headers: no framing, no sniffing, no script, no Referer carrying a link.
    let page = dept.get("/relays").await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn an_admin_of_record_sees_and_changes_only_their_own() {
    let p = portal("").await;
    let registered = p.relay.command(&[
        "registry",
        "add",
        PRINTER,
        "--admin",
        "alice@example.edu",
        "--contact",
        "alice@example.edu",
        "--dept",
        "Chemistry",
        "--purpose",
        "lab instrument",
    ]);
    assert!(registered.status.success(), "{registered:?}");
    let mut alice = p.sign_in("alice@example.edu").await;
    let mut mallory = p.sign_in("mallory@example.edu").await;
    assert!(
        alice
            .get("/relays")
            .await
            .body
            .contains("data-network=\"127.0.3.7/32\"")
    );
    let theirs = mallory.get("/relays").await;
    assert!(!theirs.body.contains("127.0.3.7"), "{}", theirs.body);

    // Asking by address for another's registration: as if it did not exist.
    for path in [
        "/relays/edit?network=127.0.3.7/32",
        "/relays/delete?network=127.0.3.7",
    ] {
        let r = mallory.get(path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(!r.body.contains("Chemistry"));
    }
    for (path, fields) in [
        ("/relays/delete", vec![("network", "127.0.3.7/32")]),
        (
            "/relays/transfer",
            vec![
                ("network", "127.0.3.7/32"),
                ("admin", "mallory@example.edu"),
            ],
        ),
        (
            "/relays/edit",
            vec![
                ("network", "127.0.3.7/32"),
                ("contact", "mallory@example.edu"),
                ("department", "x"),
                ("purpose", "x"),
            ],
        ),
    ] {
        assert_eq!(mallory.post(path, &fields).await.status, 404, "{path}");
    }
    // Nor another's request, nor the postmaster's pages.
    let sent = alice
        .post(
            "/requests",
            &request_fields("127.0.3.9", &[("admin", "alice@example.edu")]),
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let id = request_id(&alice.get("/relays").await);
    assert_eq!(mallory.get(&format!("/requests/{id}")).await.status, 404);
    for path in [
        "/review",
        &format!("/review/{id}"),
        "/registry",
        "/registry.csv",
        "/history",
        "/overview",
    ] {
        assert_eq!(mallory.get(path).await.status, 403, "{path}");
    }
    assert_eq!(
        mallory
            .post(&format!("/review/{id}"), &[("decision", "approve")])
            .await
            .status,
        403
    );
    assert_eq!(
        send_from(&p.relay, PRINTER, &[OUTSIDE]).await,
        [250, 250],
        "alice's still relays"
    );

    // Alice changes hers, then hands it to bob, after which it is bob's alone.
    let changed = alice
        .post(
            "/relays/edit",
            &[
                ("network", "127.0.3.7/32"),
                ("contact", "chem-it@example.edu"),
                ("department", "Chemistry"),
                ("purpose", "HPLC reports"),
            ],
        )
        .await;
    assert_eq!(changed.location(), Some("/relays?done=changed"));
    let shown = p.relay.command(&["registry", "show", PRINTER]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("chem-it@example.edu"));
    alice
        .post(
            "/relays/transfer",
            &[("network", "127.0.3.7/32"), ("admin", "bob@example.edu")],
        )
        .await;
    assert_eq!(
        alice.get("/relays/edit?network=127.0.3.7/32").await.status,
        404
    );
    let mut bob = p.sign_in("bob@example.edu").await;
    assert!(bob.get("/relays").await.body.contains("HPLC reports"));
}

#[tokio::test]
async fn requests_follow_the_registrys_rules_with_the_reason() {
    let p = portal("").await;
    let blocked = p.relay.command(&[
        "registry",
        "block",
        "127.0.4.0/24",
        "--reason",
        "sent spam in March",
    ]);
    assert!(blocked.status.success());
    let mut dept = p.sign_in("jdoe@example.edu").await;
    for (network, reason) in [
        ("127.0.4.9", "blocked by the postmaster: sent spam in March"),
        ("127.0.0.0/8", "blocked by the postmaster"),
        ("127.5.0.1", "outside the campus network"),
        ("127.0.9.20", "workstation range 127.0.9.0/24"),
        ("not-an-address", "is neither an IP address nor a network"),
    ] {
        let r = dept.post("/requests", &request_fields(network, &[])).await;
        assert_eq!(r.status, 422, "{network}");
        assert!(
            r.body.contains(reason),
            "{network}: {reason} not in {}",
            r.body
        );
    }
    let r = dept
        .post(
            "/requests",
            &request_fields(PRINTER, &[("contact", "nobody")]),
        )
        .await;
    assert!(r.body.contains("is not an email address"), "{}", r.body);
    // One open request per address.
    assert_eq!(
        dept.post("/requests", &request_fields(PRINTER, &[]))
            .await
            .status,
        303
    );
    let again = dept.post("/requests", &request_fields(PRINTER, &[])).await;
    assert!(
        again.body.contains("request under review already"),
        "{}",
        again.body
    );
    // A block made after the request stops its approval.
    p.relay
        .command(&["registry", "block", PRINTER, "--reason", "compromised"]);
    let mut pm = p.postmaster().await;
    let id = request_id(&pm.get("/review").await);
    let refused = pm
        .post(&format!("/review/{id}"), &[("decision", "approve")])
        .await;
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains("compromised"), "{}", refused.body);
}

#[tokio::test]
async fn signing_in_reveals_nothing_is_limited_and_sessions_expire() {
    let p = portal("session_lifetime = \"2s\"").await;
    let mut visitor = Browser::new(p.web);
    let first = visitor.get("/signin").await;
    let csrf = first
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-sluice_csrf="))
        .unwrap()
        .to_string();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(csrf.contains(flag), "{flag}: {csrf}");
    }
    // Known, unknown, outside the organisation: the same answer.
    let answer = |r: Response, address: &str| r.body.replace(address, "ADDRESS");
    let a = answer(
        visitor
            .post("/signin", &[("email", "jdoe@example.edu")])
            .await,
        "jdoe@example.edu",
    );
    let b = answer(
        visitor
            .post("/signin", &[("email", "nobody@elsewhere.test")])
            .await,
        "nobody@elsewhere.test",
    );
    let c = answer(
        visitor
            .post("/signin", &[("email", "not an address")])
            .await,
        "not an address",
    );
    assert_eq!(a, b);
    assert_eq!(a, c);
    p.mail_to("jdoe@example.edu", 0).await;
    assert!(
        p.sink
            .messages()
            .iter()
            .all(|m| m.recipients == ["jdoe@example.edu"]),
        "only the organisation's address gets mail"
    );

    // A link works once.
    let mail = p.mail_to("jdoe@example.edu", 0).await;
    let token = link_token(&mail);
    visitor.get(&format!("/signin/link?token={token}")).await;
    let signed = visitor.post("/signin/link", &[("token", &token)]).await;
    let session = signed
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-sluice_session="))
        .unwrap()
        .to_string();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age=2"] {
        assert!(session.contains(flag), "{flag}: {session}");
    }
    let mut other = Browser::new(p.web);
    other.get("/signin").await;
    assert_eq!(
        other
            .post("/signin/link", &[("token", &token)])
            .await
            .status,
        400,
        "used once"
    );
    assert_eq!(visitor.get("/relays").await.status, 200);

    // The session ends.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let expired = visitor.get("/relays").await;
    assert_eq!(expired.location(), Some("/signin"));

    // Too many links for one address: no more mail, and the same page; too many from one
    // client: told so.
    let mut flood = Browser::new(p.web);
    flood.from = Some("127.0.7.7".parse().unwrap());
    flood.get("/signin").await;
    for _ in 0..4 {
        assert_eq!(
            flood
                .post("/signin", &[("email", "target@example.edu")])
                .await
                .status,
            200
        );
    }
    for n in 0..6 {
        let r = flood
            .post("/signin", &[("email", &format!("user{n}@example.edu"))])
            .await;
        assert_eq!(r.status, 200);
    }
    let limited = flood
        .post("/signin", &[("email", "one-more@example.edu")])
        .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    p.relay.wait_for_log("too many for one address").await;
    // Everything sent has arrived: jdoe's link, three of target's four, the six others'.
    let arrived = p.sink.wait_for(10).await;
    let to_target = arrived
        .iter()
        .filter(|m| m.recipients == ["target@example.edu"])
        .count();
    assert_eq!(to_target, 3, "three links an address in a quarter hour");

    // Nothing that is not an address is counted or remembered; a huge form is refused.
    let long = format!("{}@example.edu", "a".repeat(300));
    assert_eq!(
        visitor.post("/signin", &[("email", &long)]).await.status,
        200
    );
    let huge = "a".repeat(100 * 1024);
    assert_eq!(
        visitor.post("/signin", &[("email", &huge)]).await.status,
        413
    );

    // A postmaster's wrong password: refused, and counted like SMTP AUTH's failures.
    let mut guesser = Browser::new(p.web);
    guesser.get("/signin").await;
    let wrong = guesser
        .post(
            "/signin/password",
            &[("name", POSTMASTER), ("password", "guess")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(!guesser.cookies.contains_key("__Host-sluice_session"));

    // A postmaster removed is one no longer, whatever their session says.
    let mut pm = p.postmaster().await;
    assert_eq!(pm.get("/review").await.status, 200);
    assert!(
        p.relay
            .command(&["user", "remove", POSTMASTER])
            .status
            .success()
    );
    assert_eq!(pm.get("/review").await.location(), Some("/signin"));
}

#[tokio::test]
async fn single_sign_on_is_believed_only_from_a_trusted_proxy() {
    let p = portal("trusted_proxies = [\"127.0.8.8/32\"]\nuser_header = \"X-Remote-User\"").await;
    let mut proxy = Browser::new(p.web);
    proxy.from = Some("127.0.8.8".parse().unwrap());
    // What the client wrote in its own X-Forwarded-For comes first; the proxy's last.
    let as_user = |user: &'static str| {
        [
            ("X-Remote-User", user),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", "192.0.2.55"),
        ]
    };
    let page = proxy
        .request("GET", "/relays", &as_user("jdoe@example.edu"), None)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("jdoe@example.edu"), "{}", page.body);
    let review = proxy
        .request("GET", "/review", &as_user(POSTMASTER), None)
        .await;
    assert_eq!(review.status, 200, "a postmaster user named by the proxy");
    assert_eq!(
        proxy
            .request("GET", "/review", &as_user("jdoe@example.edu"), None)
            .await
            .status,
        403
    );

    // The same header from anyone else is ignored.
    let mut direct = Browser::new(p.web);
    let forged = direct
        .request("GET", "/relays", &as_user("jdoe@example.edu"), None)
        .await;
    assert_eq!(forged.location(), Some("/signin"));
    // Nor a second user header beside the proxy's.
    let two = [
        ("X-Remote-User", "jdoe@example.edu"),
        ("X-Remote-User", POSTMASTER),
    ];
    assert_eq!(
        proxy.request("GET", "/review", &two, None).await.location(),
        Some("/signin")
    );

    // The client the proxy forwards for is who the history records.
    let body: Vec<String> = request_fields(PRINTER, &[])
        .iter()
        .chain([("csrf", proxy.csrf().as_str())].iter())
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::support::http::encode(k),
                crate::support::http::encode(v)
            )
        })
        .collect();
    let mut headers = as_user("jdoe@example.edu").to_vec();
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    let sent = proxy
        .request(
            "POST",
            "/requests",
            &headers,
            Some(body.join("&").as_bytes()),
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let history = p.relay.command(&["registry", "history", PRINTER]);
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(history.contains("portal 192.0.2.55"), "{history}");
}

#[tokio::test]
async fn the_api_does_what_the_pages_do_for_bearer_tokens() {
    let p = portal("").await;
    let token = |name: &str, role: &str| {
        let out = p.relay.command(&["token", "add", name, "--role", role]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ipam = token("physics-ipam", "department");
    let admin = token("cmdb", "postmaster");
    let api = |method: &'static str, path: String, secret: String, body: Option<String>| {
        let web = p.web;
        async move {
            let mut b = Browser::new(web);
            let auth = format!("Bearer {secret}");
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            b.request(method, &path, &headers, body.as_deref().map(str::as_bytes))
                .await
        }
    };
    let request = format!(
        r#"{{"network": "{PRINTER}", "hostname": "printer-3", "department": "Physics",
            "admin": "physics-ipam", "contact": "jdoe@example.edu", "purpose": "copier",
            "volume": "low", "senders": "copier@example.edu", "accept_terms": true}}"#
    );
    let created = api("POST", "/api/requests".into(), ipam.clone(), Some(request)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let id = id["id"].as_i64().unwrap();
    assert_eq!(
        api(
            "POST",
            format!("/api/requests/{id}/approve"),
            ipam.clone(),
            None
        )
        .await
        .status,
        403,
        "a department cannot approve"
    );
    let approved = api(
        "POST",
        format!("/api/requests/{id}/approve"),
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert!(
        approved.body.contains("\"state\":\"approved\""),
        "{}",
        approved.body
    );
    assert_eq!(send_from(&p.relay, PRINTER, &[OUTSIDE]).await, [250, 250]);

    let mine = api("GET", "/api/registrations".into(), ipam.clone(), None).await;
    let mine: serde_json::Value = serde_json::from_str(&mine.body).unwrap();
    assert_eq!(mine[0]["network"], PRINTER);
    assert_eq!(mine[0]["admin"], "physics-ipam");
    let path = "/api/registrations/127.0.3.7%2F32".to_string();
    let patched = api(
        "PATCH",
        path.clone(),
        ipam.clone(),
        Some(r#"{"purpose": "copier and scanner"}"#.into()),
    )
    .await;
    assert!(
        patched.body.contains("copier and scanner"),
        "{}",
        patched.body
    );

    // Others' tokens, no token, a wrong token.
    let other = token("chem-ipam", "department");
    assert_eq!(
        api("GET", path.clone(), other.clone(), None).await.status,
        404
    );
    assert_eq!(
        api("DELETE", path.clone(), other.clone(), None)
            .await
            .status,
        404
    );
    let block = r#"{"network": "127.0.3.0/24", "reason": "x"}"#.to_string();
    assert_eq!(
        api("POST", "/api/blocks".into(), other.clone(), Some(block))
            .await
            .status,
        403
    );
    assert_eq!(
        api("GET", "/api/history".into(), other.clone(), None)
            .await
            .status,
        403
    );
    assert_eq!(
        api("GET", "/api/blocks".into(), other, None).await.status,
        403
    );
    assert_eq!(
        api("GET", "/api/registrations".into(), "wrong".into(), None)
            .await
            .status,
        401
    );
    let mut anonymous = Browser::new(p.web);
    assert_eq!(anonymous.get("/api/registrations").await.status, 401);

    let blocked = api(
        "POST",
        "/api/blocks".into(),
        admin.clone(),
        Some(r#"{"network": "127.0.3.0/24", "reason": "compromised"}"#.into()),
    )
    .await;
    assert_eq!(blocked.status, 201, "{}", blocked.body);
    // In force when the API answers: refused at connect.
    let mut conn = Conn::connect_from(PRINTER.parse().unwrap(), p.relay.addr).await;
    assert!(conn.expect(554).await.contains("compromised"));
    let history = api(
        "GET",
        "/api/history?network=127.0.3.0/24".into(),
        admin.clone(),
        None,
    )
    .await;
    assert!(
        history.body.contains("\"who\":\"cmdb\"")
            && history.body.contains("\"origin\":\"api 127.0.0.1\""),
        "{}",
        history.body
    );
    assert_eq!(
        api(
            "DELETE",
            "/api/blocks/127.0.3.0%2F24?reason=cleaned+up".into(),
            admin.clone(),
            None
        )
        .await
        .status,
        204
    );
    let lifted = p.relay.command(&["registry", "history", "127.0.3.0/24"]);
    assert!(String::from_utf8_lossy(&lifted.stdout).contains("reason=cleaned up"));
    assert_eq!(api("DELETE", path, ipam, None).await.status, 204);
    let listed = p.relay.command(&["token", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("physics-ipam"));
}

#[tokio::test]
async fn the_portal_speaks_https_with_the_relays_certificate() {
    let p = portal("").await;
    let port = p.web.port();
    let said = python(&format!(
        "import urllib.request\n\
         r = urllib.request.urlopen('https://127.0.0.1:{port}/signin', context=ctx)\n\
         print(r.status, r.headers['Strict-Transport-Security'])\n\
         print(r.read().decode()[:200])\n"
    ))
    .await;
    assert!(said.starts_with("200 max-age=31536000"), "{said}");
    assert!(said.contains("<!DOCTYPE html>"), "{said}");
}
