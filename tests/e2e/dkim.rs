//! DKIM signing and the TLS certificate, both changed under a running relay. Signatures are
//! checked on what the sink received (after the delivery leg) by three independent
//! verifiers, each given the published records instead of DNS: mail-auth's (the library
//! the relay signs with), dkimpy (Debian's python3-dkim) and Perl's Mail::DKIM
//! (libmail-dkim-perl), the ones behind most receiving filters. Certificates are checked by
//! what a client sees.

use crate::support::relay::RelayOptions;
use crate::support::{Conn, PATIENCE, Relay, Sink};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use tokio::io::AsyncWriteExt;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/dkim"
    ))
    .join(name)
}

/// mail-auth's view of DNS: TXT records put here by the test.
#[derive(Default)]
struct TxtCache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// The verifiers every signature must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verifier {
    /// mail-auth's, the library the relay signs with.
    MailAuth,
    /// dkimpy: it hashes any white space left after the `b=` value, so a signature that
    /// has some fails here while the others pass it.
    Dkimpy,
    /// Perl's Mail::DKIM (SpamAssassin, amavis).
    MailDkim,
}

const VERIFIERS: [Verifier; 3] = [Verifier::MailAuth, Verifier::Dkimpy, Verifier::MailDkim];

/// What a verifier said of a message.
#[derive(Debug)]
enum Verdict {
    Pass,
    Fail(String),
    /// It does not know the signature's algorithm: a Mail::DKIM without Ed25519 (Debian
    /// 12's 1.20230212 has none); its script says so only then.
    Unsupported(String),
}

/// The relay's keys as DNS would publish them, for every verifier: mail-auth's reads them
/// from its TXT cache, the scripts from their arguments.
struct Dns {
    /// `(SELECTOR._domainkey.DOMAIN, v=DKIM1; k=…; p=…)`.
    records: Vec<(String, String)>,
    cache: TxtCache,
}

impl Dns {
    /// The relay's two selectors, s1 (RSA-2048) and s2 (Ed25519), published under each of
    /// `domains` as a postmaster would.
    fn published(domains: &[&str]) -> Dns {
        let (mut records, cache) = (Vec::new(), TxtCache::default());
        for domain in domains {
            for (selector, kind, public) in [
                ("s1", "rsa", "rsa-s1.pub.b64"),
                ("s2", "ed25519", "ed25519-s2.pub.b64"),
            ] {
                let p = std::fs::read_to_string(fixture(public)).unwrap();
                let name = format!("{selector}._domainkey.{domain}");
                let record = format!("v=DKIM1; k={kind}; p={}", p.trim());
                let key = DomainKey::parse(record.as_bytes()).unwrap();
                cache.insert(
                    format!("{name}.").into(),
                    Txt::from(key),
                    std::time::Instant::now(),
                );
                records.push((name, record));
            }
        }
        Dns { records, cache }
    }

    /// What `verifier` says of a message as received.
    async fn verdict(&self, verifier: Verifier, data: &[u8]) -> Verdict {
        match verifier {
            Verifier::MailAuth => {
                let message = AuthenticatedMessage::parse(data).expect("a message");
                let authenticator = MessageAuthenticator::new_cloudflare().unwrap();
                let results: Vec<DkimResult> = authenticator
                    .verify_dkim(Parameters::new(&message).with_txt_cache(&self.cache))
                    .await
                    .iter()
                    .map(|output| output.result().clone())
                    .collect();
                match results.as_slice() {
                    [DkimResult::Pass] => Verdict::Pass,
                    _ => Verdict::Fail(format!("{results:?}")),
                }
            }
            // Debian's interpreter, not the first python3 on the PATH: python3-dkim is
            // installed for it alone (a pyenv python3 does not see it).
            Verifier::Dkimpy => {
                self.script("/usr/bin/python3", "verify-dkimpy.py", data)
                    .await
            }
            Verifier::MailDkim => self.script("perl", "verify-mail-dkim.pl", data).await,
        }
    }

    /// Runs a verifier script of tests/fixtures/dkim on `data`, with the records as its
    /// arguments; its exit status is the verdict (0 pass, 1 fail, 2 unsupported).
    async fn script(&self, interpreter: &str, script: &str, data: &[u8]) -> Verdict {
        let mut child = tokio::process::Command::new(interpreter)
            .arg(fixture(script))
            .args(
                self.records
                    .iter()
                    .flat_map(|(name, record)| [name, record]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "run {interpreter} {script} ({e}; apt-get install python3-dkim \
                     python3-nacl libmail-dkim-perl)"
                )
            });
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).await.unwrap();
        drop(stdin);
        let output = child.wait_with_output().await.unwrap();
        let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
        match output.status.code() {
            Some(0) => Verdict::Pass,
            Some(1) => Verdict::Fail(said),
            Some(2) => Verdict::Unsupported(said),
            _ => panic!(
                "{script} failed ({}):\n{said}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// Asserts that every verifier passes the message, and that its signature ends with
    /// the `b=` value. Mail::DKIM may instead say that it does not know Ed25519, for an
    /// Ed25519 signature only.
    async fn assert_verifies(&self, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let field = signature_field(&text);
        assert_b_last(field);
        let mut wrong = Vec::new();
        for verifier in VERIFIERS {
            match self.verdict(verifier, data).await {
                Verdict::Pass => {}
                Verdict::Unsupported(said)
                    if verifier == Verifier::MailDkim && field.contains("a=ed25519-sha256") =>
                {
                    eprintln!("Mail::DKIM cannot check an Ed25519 signature here: {said}");
                }
                Verdict::Unsupported(said) => wrong.push(format!("{verifier:?}: {said}")),
                Verdict::Fail(why) => wrong.push(format!("{verifier:?}: {why}")),
            }
        }
        assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
    }

    /// Asserts that no verifier passes the message: each of them can tell a change.
    async fn assert_rejected(&self, data: &[u8]) {
        for verifier in VERIFIERS {
            let verdict = self.verdict(verifier, data).await;
            assert!(
                !matches!(verdict, Verdict::Pass),
                "{verifier:?} passed a changed message:\n{}",
                String::from_utf8_lossy(data)
            );
        }
    }
}

/// The `DKIM-Signature` field on top of a message as received, folded as it came, with its
/// final CRLF.
fn signature_field(text: &str) -> &str {
    assert!(text.starts_with("DKIM-Signature: "), "not signed:\n{text}");
    let end = text
        .match_indices("\r\n")
        .map(|(at, _)| at + 2)
        .find(|&end| !text[end..].starts_with([' ', '\t']))
        .expect("a whole field");
    &text[..end]
}

/// Asserts that `b=` is the field's last tag and that nothing follows its value: no `;`,
/// no white space before the final CRLF. (White space there is what dkimpy hashes and the
/// signer did not.)
fn assert_b_last(field: &str) {
    let last = field.rsplit(';').next().unwrap_or(field);
    let value = last
        .trim_start()
        .strip_prefix("b=")
        .unwrap_or_else(|| panic!("b= is not the last tag: {field:?}"));
    let value = value
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("{field:?}"));
    assert!(
        value.ends_with(|c: char| c.is_ascii_alphanumeric() || "+/=".contains(c)),
        "something after the b= value: {field:?}"
    );
    let unfolded = value.replace("\r\n\t", "").replace("\r\n ", "");
    assert!(
        unfolded.len() > 80
            && unfolded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)),
        "b= is not base64 with folds: {field:?}"
    );
}

/// The default `[dkim] headers`, as the README lists them.
const DEFAULT_HEADERS: [&str; 15] = [
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A `[dkim]` section with both keys; `more` adds keys (`headers`, `canonicalization`).
fn dkim_section(domain: &str, selector: &str, more: &str) -> String {
    format!(
        "[dkim]\ndomain = \"{domain}\"\nselector = \"{selector}\"\n{more}\
         [dkim.keys]\ns1 = \"{}\"\ns2 = \"{}\"\n",
        fixture("rsa-s1.pem").display(),
        fixture("ed25519-s2.pem").display()
    )
}

/// Replaces the relay's `[dkim]` section (the last in its file) by `section` and runs
/// `sluice reload`; returns what the reload said, after checking that it succeeded.
fn reload_with(relay: &Relay, section: &str) -> String {
    let config = std::fs::read_to_string(relay.config_path()).unwrap();
    let start = config.find("[dkim]").expect("a [dkim] section");
    std::fs::write(
        relay.config_path(),
        format!("{}{section}", &config[..start]),
    )
    .unwrap();
    let out = relay.command(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

async fn send(relay: &Relay, message: &str) {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["someone@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send(format!("{message}.\r\n")).await;
    conn.expect(250).await;
}

fn simple_message(subject: &str) -> String {
    format!(
        "From: App <app@example.edu>\r\nTo: someone@example.org\r\nSubject: {subject}\r\n\r\n\
         Line one.\r\n..a line that starts with a dot\r\n\r\n\r\n"
    )
}

/// A relay that signs with s1 (RSA) for relay.test, the default header list, relaying to
/// `sink`; and the verifiers' view of relay.test's keys.
async fn signing_relay(sink: &Sink) -> (Relay, Dns) {
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: dkim_section("relay.test", "s1", ""),
        ..Default::default()
    })
    .await;
    (relay, Dns::published(&["relay.test"]))
}

#[tokio::test]
async fn signatures_verify_everywhere_after_delivery_and_rotate_on_reload() {
    let sink = Sink::start().await;
    // The default header list, an RSA-2048 key and d=relay.test: the case where mail-auth's
    // own field folds between the b= value and a final `;`, which dkimpy rejects.
    let (relay, dns) = signing_relay(&sink).await;
    send(&relay, &simple_message("signed with s1")).await;
    let first = &sink.wait_for(1).await[0];
    let text = String::from_utf8_lossy(&first.data).into_owned();
    assert!(
        text.contains("s=s1") && text.contains("a=rsa-sha256"),
        "{text}"
    );
    dns.assert_verifies(&first.data).await;

    // A changed message no longer verifies, body or signed field: every verifier can tell.
    dns.assert_rejected(text.replace("Line one.", "Line 1.").as_bytes())
        .await;
    dns.assert_rejected(text.replace("signed with s1", "signed with s9").as_bytes())
        .await;

    // Rotation: s2 signs from the reload on, without a restart.
    let said = reload_with(&relay, &dkim_section("relay.test", "s2", ""));
    assert!(
        said.contains("DKIM signing d=relay.test s=s2 ed25519-sha256"),
        "{said}"
    );
    send(&relay, &simple_message("signed with s2")).await;
    let second = &sink.wait_for(2).await[1];
    let text = String::from_utf8_lossy(&second.data).into_owned();
    assert!(
        text.contains("s=s2") && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    dns.assert_verifies(&second.data).await;
    dns.assert_rejected(text.replace("Line one.", "Line 1.").as_bytes())
        .await;

    // What the relay writes itself is signed too: a registry confirmation.
    let out = relay.command(&[
        "registry",
        "add",
        "127.0.0.9",
        "--admin",
        "jdoe",
        "--contact",
        "jdoe@example.edu",
        "--dept",
        "IT",
        "--purpose",
        "test",
    ]);
    assert!(out.status.success(), "{out:?}");
    let notice = &sink.wait_for(3).await[2];
    assert_eq!(notice.recipients, ["jdoe@example.edu"]);
    dns.assert_verifies(&notice.data).await;

    // Back to s1, as when a rotation is undone.
    reload_with(&relay, &dkim_section("relay.test", "s1", ""));
    send(&relay, &simple_message("s1 again")).await;
    let fourth = &sink.wait_for(4).await[3];
    assert!(String::from_utf8_lossy(&fourth.data).contains("s=s1"));
    dns.assert_verifies(&fourth.data).await;

    // A broken section is refused and the running signer stays.
    let config = std::fs::read_to_string(relay.config_path()).unwrap();
    std::fs::write(
        relay.config_path(),
        config.replace("selector = \"s1\"", "selector = \"s9\""),
    )
    .unwrap();
    let out = relay.command(&["reload"]);
    assert!(!out.status.success());
    send(&relay, &simple_message("still s1")).await;
    let fifth = &sink.wait_for(5).await[4];
    assert!(String::from_utf8_lossy(&fifth.data).contains("s=s1"));
}

/// How many `X-Campus-N` fields the long message carries.
const CAMPUS_FIELDS: usize = 40;

/// A message with many header fields (one of them folded, one repeated) and a body that
/// the two canonicalizations read differently.
fn long_message(round: usize) -> String {
    let mut message = format!(
        "From: Lab Instrument <instrument@example.edu>\r\nTo: someone@example.org\r\n\
         Subject: Round {round}: a subject long enough to be\r\n\tfolded by its writer\r\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0200\r\nMessage-ID: <round-{round}@example.edu>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    );
    for n in 0..CAMPUS_FIELDS {
        message.push_str(&format!("X-Campus-{n}: value {n}\r\n"));
    }
    message.push_str("X-Campus-1: a second X-Campus-1\r\n");
    message.push_str("\r\nA body  with\tinner white space \r\n\r\n..and a dot line\r\n\r\n");
    message
}

/// Where a field folds depends on the lengths of the tags before it (the domain, the header
/// list): each round moves them, and changes selector (RSA or Ed25519) and canonicalization.
#[tokio::test]
async fn long_header_lists_verify_everywhere_wherever_the_field_folds() {
    let rounds = [
        ("relay.test", "s1", 0, "relaxed/relaxed"),
        ("relay.test", "s1", 3, "simple/simple"),
        ("a.relay.test", "s2", 5, "relaxed/relaxed"),
        ("mail.relay.test", "s1", 11, "relaxed/simple"),
        (
            "department-of-long-names.relay.test",
            "s1",
            17,
            "simple/relaxed",
        ),
        ("x.relay.test", "s2", 24, "simple/simple"),
        ("it.relay.test", "s1", 33, "relaxed/relaxed"),
        ("relay.test", "s2", CAMPUS_FIELDS, "relaxed/simple"),
    ];
    let domains: Vec<&str> = rounds.iter().map(|(domain, ..)| *domain).collect();
    let dns = Dns::published(&domains);
    let section = |(domain, selector, campus, canon): (&str, &str, usize, &str)| {
        let headers: Vec<String> = DEFAULT_HEADERS
            .iter()
            .map(|h| format!("\"{h}\""))
            .chain((0..campus).map(|n| format!("\"X-Campus-{n}\"")))
            .collect();
        dkim_section(
            domain,
            selector,
            &format!(
                "headers = [{}]\ncanonicalization = \"{canon}\"\n",
                headers.join(", ")
            ),
        )
    };
    let sink = Sink::start().await;
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: section(rounds[0]),
        ..Default::default()
    })
    .await;
    let mut h_lengths = Vec::new();
    for (round, setting) in rounds.into_iter().enumerate() {
        if round > 0 {
            let said = reload_with(&relay, &section(setting));
            let (domain, selector, ..) = setting;
            assert!(
                said.contains(&format!("DKIM signing d={domain} s={selector} ")),
                "{said}"
            );
        }
        send(&relay, &long_message(round)).await;
        let received = &sink.wait_for(round + 1).await[round];
        let text = String::from_utf8_lossy(&received.data).into_owned();
        let field = signature_field(&text);
        let (domain, selector, campus, canon) = setting;
        for tag in [
            format!("d={domain};"),
            format!("s={selector};"),
            format!("c={canon};"),
        ] {
            assert!(field.contains(&tag), "no {tag} in {field}");
        }
        // Every listed field that is there (X-Campus-1 twice), and the absent ones once.
        let h = field
            .split(';')
            .map(|tag| tag.trim_start())
            .find_map(|tag| tag.strip_prefix("h="))
            .unwrap_or_else(|| panic!("no h= in {field}"));
        let names = h.split(':').count();
        let twice = usize::from(campus > 1);
        assert_eq!(names, DEFAULT_HEADERS.len() + campus + twice, "{field}");
        h_lengths.push(h.len());
        dns.assert_verifies(&received.data).await;
    }
    h_lengths.dedup();
    assert_eq!(h_lengths.len(), rounds.len(), "every round moves the folds");
}

/// A self-signed certificate for `name`, written as PEM to `dir/cert.pem` and
/// `dir/key.pem` (replaced by rename, as deployment tools do); returns its DER's SHA-256.
fn install_certificate(dir: &std::path::Path, name: &str) -> String {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    for (file, pem) in [
        ("key.pem", generated.key_pair.serialize_pem()),
        ("cert.pem", generated.cert.pem()),
    ] {
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
    hex(ring::digest::digest(&ring::digest::SHA256, generated.cert.der()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the certificate a STARTTLS client is shown now.
async fn presented(addr: std::net::SocketAddr) -> String {
    crate::support::python(&format!(
        "s = smtplib.SMTP('{}', {})\n\
         s.starttls(context=ctx)\n\
         print(hashlib.sha256(s.sock.getpeercert(True)).hexdigest())\n\
         s.quit()\n",
        addr.ip(),
        addr.port()
    ))
    .await
    .trim()
    .to_string()
}

#[tokio::test]
async fn a_new_certificate_is_taken_when_its_files_change() {
    let sink = Sink::start().await;
    let certs = tempfile::tempdir().unwrap();
    let first = install_certificate(certs.path(), "first.relay.test");
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: format!(
            "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n",
            certs.path().display()
        ),
        ..Default::default()
    })
    .await;
    assert_eq!(presented(relay.addr).await, first);

    // A session open across the change (before STARTTLS: it is the next handshake that
    // must get the new certificate, and the session must go on).
    let mut open = Conn::greeted(relay.addr).await;
    open.cmd("EHLO client.test", 250).await;

    let second = install_certificate(certs.path(), "second.relay.test");
    let deadline = std::time::Instant::now() + PATIENCE;
    while presented(relay.addr).await != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate never came:\n{}",
            relay.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    open.envelope("app@example.edu", &["someone@example.org"])
        .await;
    open.cmd("DATA", 354).await;
    open.send("Subject: across the change\r\n\r\nhi\r\n.\r\n")
        .await;
    open.expect(250).await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
    relay
        .wait_for_log("certificate files changed: TLS certificate")
        .await;
}

#[tokio::test]
async fn a_message_too_large_to_hold_in_memory_is_signed_and_relayed_whole() {
    let sink = Sink::start().await;
    let (relay, dns) = signing_relay(&sink).await;
    // Several MB: the session writes it to the spool as it arrives, then the relay's
    // fields and the signature are put on top of the text it wrote.
    let mut body = String::new();
    for n in 0..60_000 {
        body.push_str(&format!(
            "line {n} of a large report\r\n..{n} starts with a dot\r\n"
        ));
    }
    let message = format!(
        "From: App <app@example.edu>\r\nTo: someone@example.org\r\nSubject: large\r\n\r\n{body}"
    );
    assert!(message.len() > 2_000_000);
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["someone@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    for chunk in message.as_bytes().chunks(100_000) {
        conn.send(chunk).await;
    }
    conn.send(".\r\n").await;
    conn.expect(250).await;
    let received = &sink.wait_for(1).await[0];
    let text = String::from_utf8_lossy(&received.data);
    // The client's text arrives as it was sent (unstuffed once by the relay, stuffed
    // again towards the sink, unstuffed by the sink), under the relay's fields.
    let unstuffed = body.replace("\r\n..", "\r\n.");
    assert!(text.ends_with(&unstuffed), "the body changed on the way");
    assert!(text.contains("\r\nReceived: from "), "{}", &text[..2000]);
    dns.assert_verifies(&received.data).await;
    // Nothing is left behind in the spool once it is delivered.
    relay.wait_for_queued(0).await;
}
