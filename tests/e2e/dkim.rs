//! DKIM signing and the TLS certificate, both changed under a running relay: signatures
//! are checked with mail-auth's verifier on what the sink received (after the delivery
//! leg), against DNS records served from its cache; certificates by what a client sees.

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
use std::sync::Mutex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/dkim"
    ))
    .join(name)
}

/// DNS as the verifier sees it: TXT records put here by the test.
#[derive(Default)]
struct Dns(Mutex<HashMap<String, Txt>>);

impl ResolverCache<String, Txt> for Dns {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: String, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

impl Dns {
    /// The relay's two selectors, published as a postmaster would.
    fn published() -> Dns {
        let dns = Dns::default();
        for (selector, kind, public) in [
            ("s1", "rsa", "rsa-s1.pub.b64"),
            ("s2", "ed25519", "ed25519-s2.pub.b64"),
        ] {
            let p = std::fs::read_to_string(fixture(public)).unwrap();
            let record = format!("v=DKIM1; k={kind}; p={}", p.trim());
            let key = DomainKey::parse(record.as_bytes()).unwrap();
            dns.insert(
                format!("{selector}._domainkey.relay.test."),
                Txt::from(key),
                std::time::Instant::now(),
            );
        }
        dns
    }

    /// The DKIM results of a message as received.
    async fn verify(&self, data: &[u8]) -> Vec<DkimResult> {
        let message = AuthenticatedMessage::parse(data).expect("a message");
        let authenticator = MessageAuthenticator::new_cloudflare().unwrap();
        authenticator
            .verify_dkim(Parameters::new(&message).with_txt_cache(self))
            .await
            .iter()
            .map(|output| output.result().clone())
            .collect()
    }
}

fn dkim_section(selector: &str) -> String {
    format!(
        "[dkim]\ndomain = \"relay.test\"\nselector = \"{selector}\"\n\
         [dkim.keys]\ns1 = \"{}\"\ns2 = \"{}\"\n",
        fixture("rsa-s1.pem").display(),
        fixture("ed25519-s2.pem").display()
    )
}

async fn send(relay: &Relay, subject: &str) {
    let mut conn = Conn::greeted(relay.addr).await;
    conn.envelope("app@example.edu", &["someone@example.org"])
        .await;
    conn.cmd("DATA", 354).await;
    conn.send(format!(
        "From: App <app@example.edu>\r\nTo: someone@example.org\r\nSubject: {subject}\r\n\r\n\
         Line one.\r\n..a line that starts with a dot\r\n\r\n\r\n.\r\n"
    ))
    .await;
    conn.expect(250).await;
}

#[tokio::test]
async fn signatures_verify_after_delivery_and_rotate_on_reload() {
    let sink = Sink::start().await;
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        extra: dkim_section("s1"),
        ..Default::default()
    })
    .await;
    let dns = Dns::published();
    send(&relay, "signed with s1").await;
    let first = &sink.wait_for(1).await[0];
    let text = String::from_utf8_lossy(&first.data);
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(
        text.contains("s=s1") && text.contains("a=rsa-sha256"),
        "{text}"
    );
    assert_eq!(dns.verify(&first.data).await, [DkimResult::Pass], "{text}");

    // A changed message no longer verifies: the test can tell.
    let tampered = String::from_utf8_lossy(&first.data).replace("Line one.", "Line 1.");
    let results = dns.verify(tampered.as_bytes()).await;
    assert!(
        !results.is_empty() && !results.contains(&DkimResult::Pass),
        "{results:?}"
    );

    // Rotation: s2 signs from the reload on, without a restart.
    let config = std::fs::read_to_string(relay.config_path()).unwrap();
    std::fs::write(
        relay.config_path(),
        config.replace("selector = \"s1\"", "selector = \"s2\""),
    )
    .unwrap();
    let out = relay.command(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("DKIM signing d=relay.test s=s2 ed25519-sha256"),
        "{said}"
    );
    send(&relay, "signed with s2").await;
    let second = &sink.wait_for(2).await[1];
    let text = String::from_utf8_lossy(&second.data);
    assert!(
        text.contains("s=s2") && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    assert_eq!(dns.verify(&second.data).await, [DkimResult::Pass], "{text}");

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
    assert_eq!(dns.verify(&notice.data).await, [DkimResult::Pass]);

    // A broken section is refused and the running signer stays.
    let config = std::fs::read_to_string(relay.config_path()).unwrap();
    std::fs::write(
        relay.config_path(),
        config.replace("selector = \"s2\"", "selector = \"s9\""),
    )
    .unwrap();
    let out = relay.command(&["reload"]);
    assert!(!out.status.success());
    send(&relay, "still s2").await;
    let fourth = &sink.wait_for(4).await[3];
    assert!(String::from_utf8_lossy(&fourth.data).contains("s=s2"));
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
