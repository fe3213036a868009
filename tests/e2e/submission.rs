//! The listener kinds (relay, submission, smtps), SMTP AUTH against `sluice user`, the
//! PROXY protocol, and the TLS versions offered: through the real relay, with Python's
//! smtplib and a raw client, from several 127.x addresses.

use crate::support::relay::RelayOptions;
use crate::support::{Conn, Relay, Sink};
use std::net::SocketAddr;

/// The campus is 127.0.0.0/16; 127.5.x.x is off campus.
const CHAIN: &str = r#"
[[policy]]
name = "campus-access"
module = "builtin:campus-access"
[policy.config]
campus = ["127.0.0.0/16"]
internal_domains = ["example.edu"]
"#;

const OFF_CAMPUS: &str = "127.5.0.1";

struct Relays {
    relay: Relay,
    submission: SocketAddr,
    smtps: SocketAddr,
    proxied: SocketAddr,
}

async fn start(sink: &Sink) -> Relays {
    // Port 0: the relay picks, and says where in its log.
    let relay = Relay::start_with(RelayOptions {
        smarthost: Some(sink.addr),
        policies: Some(CHAIN.into()),
        extra: "[[listener]]\naddr = \"127.0.0.1:0\"\nkind = \"submission\"\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\nkind = \"smtps\"\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\nname = \"behind-balancer\"\nproxy_protocol = true\n\
             proxy_from = [\"127.0.0.1/32\"]\n\
             [auth]\nmax_failures = 3\nfailure_delay = \"50ms\"\n"
            .into(),
        ..Default::default()
    })
    .await;
    let added = relay.command_with_input(&["user", "add", "jdoe"], "correct horse\n");
    assert!(added.status.success(), "{added:?}");
    Relays {
        submission: relay.listening("submission"),
        smtps: relay.listening("smtps"),
        proxied: relay.listening("behind-balancer"),
        relay,
    }
}

/// Runs a Python smtplib script with `ADDR`, the (host, port) tuple, and `SOURCE`, the
/// client's address, defined. Returns what it printed.
async fn python(script: &str, addr: SocketAddr, source: &str) -> String {
    crate::support::python(&format!(
        "ADDR = ('{}', {})\nSOURCE = ('{source}', 0)\n{script}",
        addr.ip(),
        addr.port()
    ))
    .await
}

const SEND: &str =
    "msg = 'From: jdoe@example.edu\\r\\nSubject: submitted\\r\\n\\r\\nhello\\r\\n'\n";

#[tokio::test]
async fn an_authenticated_client_relays_from_off_campus_over_submission() {
    let sink = Sink::start().await;
    let r = start(&sink).await;
    let said = python(
        &format!(
            "{SEND}s = smtplib.SMTP(*ADDR, source_address=SOURCE)\n\
             s.ehlo()\n\
             print('auth before tls:', 'auth' in s.esmtp_features)\n\
             s.starttls(context=ctx)\n\
             s.ehlo()\n\
             print('auth after tls:', s.esmtp_features.get('auth'))\n\
             print(s.login('jdoe', 'correct horse'))\n\
             s.sendmail('jdoe@example.edu', ['someone@gmail.com'], msg)\n\
             s.quit()\n"
        ),
        r.submission,
        OFF_CAMPUS,
    )
    .await;
    assert!(said.contains("auth before tls: False"), "{said}");
    assert!(said.contains("auth after tls:  PLAIN LOGIN"), "{said}");
    assert!(
        said.contains("(235, b'2.7.0 Authentication successful')"),
        "{said}"
    );
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["someone@gmail.com"]);
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(
        text.contains("(authenticated as jdoe)") && text.contains("with ESMTPSA"),
        "{text}"
    );
    assert!(
        !r.relay.log().contains("correct horse"),
        "a password in the log"
    );

    // Without authenticating: refused at MAIL on submission, at connect on the relay port.
    let mut conn = Conn::connect_from(OFF_CAMPUS.parse().unwrap(), r.submission).await;
    conn.expect(220).await;
    conn.cmd("EHLO client.test", 250).await;
    conn.cmd("MAIL FROM:<jdoe@example.edu>", 530).await;
    let refused = conn
        .cmd("AUTH PLAIN AGpkb2UAY29ycmVjdCBob3JzZQ==", 538)
        .await;
    assert!(refused.contains("Encryption required"), "{refused}");
    let mut conn = Conn::connect_from(OFF_CAMPUS.parse().unwrap(), r.relay.addr).await;
    conn.expect(554).await;
}

#[tokio::test]
async fn wrong_passwords_fail_and_repeated_failures_lock_the_user_out_at_that_address() {
    let sink = Sink::start().await;
    let r = start(&sink).await;
    let said = python(
        "for password in ['wrong', 'Correct horse', 'correct horse ', 'correct horse']:\n\
         \x20   s = smtplib.SMTP(*ADDR, source_address=SOURCE)\n\
         \x20   s.starttls(context=ctx)\n\
         \x20   s.ehlo()\n\
         \x20   s.esmtp_features['auth'] = 'PLAIN'  # one attempt per login, not one per mechanism\n\
         \x20   try:\n\
         \x20       print(s.login('jdoe', password))\n\
         \x20   except smtplib.SMTPAuthenticationError as e:\n\
         \x20       print('refused', e.smtp_code)\n\
         \x20   except smtplib.SMTPServerDisconnected:\n\
         \x20       print('disconnected')\n",
        r.submission,
        "127.0.7.7",
    )
    .await;
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        ["refused 535", "refused 535", "refused 535", "refused 454"],
        "{said}"
    );
    r.relay
        .wait_for_log("ip=127.0.7.7 mechanism=PLAIN failures=3")
        .await;
    r.relay
        .wait_for_log("authentication refused: too many failures for this user from this address")
        .await;
    // Another address is not locked out.
    let said = python(
        "s = smtplib.SMTP(*ADDR, source_address=SOURCE)\ns.starttls(context=ctx)\nprint(s.login('jdoe', 'correct horse')[0])\n",
        r.submission,
        "127.0.7.8",
    )
    .await;
    assert_eq!(said.trim(), "235");
    assert!(!r.relay.log().contains("Correct horse"));
}

/// Python: `attempt(user, password)` logs in over STARTTLS on a connection of its own and
/// returns the reply code (`'closed'` when the relay hung up without one).
const ATTEMPT: &str = "def attempt(user, password):\n\
    \x20   s = smtplib.SMTP(*ADDR, source_address=SOURCE)\n\
    \x20   s.starttls(context=ctx)\n\
    \x20   s.ehlo()\n\
    \x20   s.esmtp_features['auth'] = 'PLAIN'  # one attempt per login, not one per mechanism\n\
    \x20   try:\n\
    \x20       code = s.login(user, password)[0]\n\
    \x20   except smtplib.SMTPAuthenticationError as e:\n\
    \x20       code = e.smtp_code\n\
    \x20   except smtplib.SMTPServerDisconnected:\n\
    \x20       return 'closed'\n\
    \x20   try:\n\
    \x20       s.quit()\n\
    \x20   except smtplib.SMTPServerDisconnected:\n\
    \x20       pass\n\
    \x20   return code\n";

/// The attacker's own account, besides the victim `jdoe`.
async fn add_own_account(r: &Relays) {
    let added = r
        .relay
        .command_with_input(&["user", "add", "mallory"], "mallory's own\n");
    assert!(added.status.success(), "{added:?}");
}

#[tokio::test]
async fn guesses_between_logins_to_ones_own_account_still_lock_the_victim_out() {
    // The attack: guesses at jdoe's password, each run just under max_failures (3) and
    // followed by a login to the attacker's own account, which used to forgive them all.
    let sink = Sink::start().await;
    let r = start(&sink).await;
    add_own_account(&r).await;
    let said = python(
        &format!(
            "{ATTEMPT}guesses, own = [], []\n\
             for i in range(16):\n\
             \x20   guesses.append(attempt('jdoe', 'guess %d' % i))\n\
             \x20   if i % 2 == 1:\n\
             \x20       own.append(attempt('mallory', \"mallory's own\"))\n\
             print('guesses', *guesses)\n\
             print('own', *own)\n\
             print('victim', attempt('jdoe', 'correct horse'))\n"
        ),
        r.submission,
        "127.0.8.8",
    )
    .await;
    let lines: Vec<&str> = said.lines().collect();
    let locked = ["454"; 13].join(" ");
    assert_eq!(
        lines,
        [
            format!("guesses 535 535 535 {locked}"),
            format!("own {}", ["235"; 8].join(" ")),
            // Locked out: the right password is refused too, unchecked.
            "victim 454".to_string(),
        ],
        "{said}"
    );
    let log = r
        .relay
        .wait_for_log("authentication refused: too many failures for this user from this address")
        .await;
    assert!(
        crate::support::lines_with(&log, "too many failures for this user")
            .iter()
            .all(|line| line.contains(" ip=127.0.8.8")),
        "{log}"
    );
    assert_eq!(
        crate::support::lines_with(&log, "ip=127.0.8.8 mechanism=PLAIN failures=").len(),
        3,
        "only three guesses were checked:\n{log}"
    );
    // jdoe is locked out at that address only.
    let said = python(
        &format!("{ATTEMPT}print(attempt('jdoe', 'correct horse'))\n"),
        r.submission,
        "127.0.8.9",
    )
    .await;
    assert_eq!(said.trim(), "235");
}

#[tokio::test]
async fn guessing_across_many_names_from_one_address_locks_the_address_out() {
    // One guess each at many names, with logins to the attacker's own account between:
    // no user reaches max_failures (3), but the address reaches 4 × 3 failures.
    let sink = Sink::start().await;
    let r = start(&sink).await;
    add_own_account(&r).await;
    let said = python(
        &format!(
            "{ATTEMPT}for i in range(13):\n\
             \x20   print('own', attempt('mallory', \"mallory's own\"))\n\
             \x20   print('guess', attempt('user%d' % i, 'guess'))\n"
        ),
        r.submission,
        "127.0.9.9",
    )
    .await;
    let mut expected: Vec<&str> = ["own 235", "guess 535"].repeat(12);
    // The address is locked out: its own account's right password is refused too.
    expected.extend(["own 454", "guess 454"]);
    assert_eq!(said.lines().collect::<Vec<_>>(), expected, "{said}");
    let log = r
        .relay
        .wait_for_log("authentication refused: too many failures from this address")
        .await;
    assert!(
        crate::support::lines_with(&log, "too many failures from this address")
            .iter()
            .all(|line| line.contains(" ip=127.0.9.9")),
        "{log}"
    );
}

#[tokio::test]
async fn smtps_speaks_tls_from_the_first_byte_and_requires_auth() {
    let sink = Sink::start().await;
    let r = start(&sink).await;
    let said = python(
        &format!(
            "{SEND}s = smtplib.SMTP_SSL(*ADDR, source_address=SOURCE, context=ctx)\n\
             print(s.sock.version())\n\
             s.ehlo()\n\
             try:\n\
             \x20   s.sendmail('jdoe@example.edu', ['someone@gmail.com'], msg)\n\
             except smtplib.SMTPSenderRefused as e:\n\
             \x20   print('refused', e.smtp_code)\n\
             s.login('jdoe', 'correct horse')\n\
             s.sendmail('jdoe@example.edu', ['someone@gmail.com'], msg)\n\
             s.quit()\n"
        ),
        r.smtps,
        OFF_CAMPUS,
    )
    .await;
    assert!(said.starts_with("TLSv1.3"), "{said}");
    assert!(said.contains("refused 530"), "{said}");
    let received = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&received[0].data).contains("with ESMTPSA"));
}

/// A PROXY v2 header for a TCP/IPv4 connection from `client` (built by hand, so the test
/// does not share the relay's parser).
fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&25u16.to_be_bytes());
    header
}

#[tokio::test]
async fn the_proxy_header_names_the_client_policies_see() {
    let sink = Sink::start().await;
    let r = start(&sink).await;
    // v1 from off campus: campus-access sees 127.5.0.1 and refuses it.
    let mut conn = Conn::connect(r.proxied).await;
    conn.send("PROXY TCP4 127.5.0.1 127.0.0.1 40000 25\r\n")
        .await;
    let refused = conn.expect(554).await;
    assert!(
        refused.contains("127.5.0.1 is outside the campus"),
        "{refused}"
    );

    // v2 from a campus machine: it may send inside, and Received names it.
    let mut conn = Conn::connect(r.proxied).await;
    conn.send(proxy_v2([127, 0, 3, 4], 40001)).await;
    conn.expect(220).await;
    conn.envelope("app@example.edu", &["dean@example.edu"])
        .await;
    conn.cmd("RCPT TO:<someone@gmail.com>", 550).await;
    conn.cmd("DATA", 354).await;
    conn.send("Subject: proxied\r\n\r\nhi\r\n.\r\n").await;
    conn.expect(250).await;
    let received = sink.wait_for(1).await;
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(text.contains("([127.0.3.4])"), "{text}");

    // v2 LOCAL (the balancer's own health check): the balancer is the client.
    let mut conn = Conn::connect(r.proxied).await;
    conn.send(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").await;
    conn.expect(220).await;
    conn.cmd("QUIT", 221).await;

    // From an address that is not a balancer's: closed, whatever it claims.
    let mut conn = Conn::connect_from("127.0.0.2".parse().unwrap(), r.proxied).await;
    conn.send("PROXY TCP4 127.0.3.4 127.0.0.1 40000 25\r\n")
        .await;
    assert!(conn.read_reply().await.is_none());
    r.relay
        .wait_for_log("connection refused: not a load balancer named in proxy_from")
        .await;

    // Without a header: closed without a word.
    let mut conn = Conn::connect(r.proxied).await;
    conn.send("EHLO client.test\r\n").await;
    assert!(conn.read_reply().await.is_none());
    r.relay
        .wait_for_log("connection refused: the connection did not start with a PROXY header")
        .await;
}

/// A TLS 1.1 ClientHello: record version 3.1, client version 3.2, no extensions (so no
/// supported_versions offering 1.2 or 1.3).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend_from_slice(&[1, 0]); // null compression
    let mut handshake = vec![1, 0, 0, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = Sink::start().await;
    let r = start(&sink).await;
    for addr in [r.smtps, r.relay.addr] {
        let mut tcp = if addr == r.relay.addr {
            // By STARTTLS on the relay port.
            let mut conn = Conn::greeted(addr).await;
            conn.cmd("EHLO client.test", 250).await;
            conn.cmd("STARTTLS", 220).await;
            conn.into_stream()
        } else {
            tokio::net::TcpStream::connect(addr).await.unwrap()
        };
        tcp.write_all(&tls11_client_hello()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tcp.read_to_end(&mut answer),
        )
        .await;
        // A fatal (2) alert (21): handshake_failure (40) or protocol_version (70); never a
        // ServerHello (22).
        assert_eq!(answer.first(), Some(&21), "{addr}: {answer:?}");
        assert!(
            answer.get(5) == Some(&2) && matches!(answer.get(6), Some(40 | 70)),
            "{addr}: {answer:?}"
        );
    }
}
