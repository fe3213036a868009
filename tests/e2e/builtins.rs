//! The campus rules shipped as built-in modules, through the real relay.

use crate::support::{Conn, Relay, Sink};

const HELO_CHAIN: &str = r#"
[[policy]]
name = "helo"
module = "builtin:helo"

[[policy]]
name = "networks"
module = "builtin:networks"
"#;

#[tokio::test]
async fn helo_refuses_an_ampersand_and_a_name_that_is_not_one() {
    let sink = Sink::start().await;
    let relay = Relay::with_chain(sink.addr, HELO_CHAIN, &[]).await;
    let mut conn = Conn::greeted(relay.addr).await;
    let refused = conn.cmd("EHLO lab&co.example.edu", 550).await;
    assert!(refused.contains("may not contain '&'"), "{refused}");
    conn.cmd("EHLO not/a/name", 501).await;
    // Refused names leave the client without a greeting: no mail yet.
    conn.cmd("MAIL FROM:<app@example.edu>", 503).await;
    conn.cmd("EHLO HP_LaserJet.lab.example.edu", 250).await;
    conn.cmd("MAIL FROM:<app@example.edu>", 250).await;
    conn.cmd("RCPT TO:<someone@example.org>", 250).await;
    relay.wait_for_log("helo=reject").await;
}
