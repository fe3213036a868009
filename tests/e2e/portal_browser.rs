//! The portal's whole flow in a real browser: headless Chromium driven through WebDriver
//! (Selenium, `tests/e2e/browser/portal_flow.py`) against the real relay. The script asks
//! this test for what only the test can see (the mail the sink received, the reply to a
//! message sent from a given address) over a line of JSON each way. It saves a screenshot
//! of each page in `target/portal-screenshots/`; the README shows two of them.

use crate::portal::portal;
use crate::registry::send_from;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const EMAIL: &str = "jdoe@example.edu";
const PRINTER: &str = "127.0.3.77";
const OUTSIDE: &str = "someone@gmail.com";

#[tokio::test]
async fn a_department_requests_the_postmaster_approves_and_the_admin_of_record_deletes_in_a_browser()
 {
    let p = portal("").await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/portal-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // The script starts itself again under Debian's Python when this one lacks Selenium.
    let mut script = Command::new("python3")
        .arg(root.join("tests/e2e/browser/portal_flow.py"))
        .arg(format!("http://localhost:{}", p.web.port()))
        .arg(&shots)
        .env("PORTAL_EMAIL", EMAIL)
        .env("PORTAL_IP", PRINTER)
        .env("PORTAL_OUTSIDE_RCPT", OUTSIDE)
        .env("PORTAL_POSTMASTER", "pm")
        .env("PORTAL_PASSWORD", "review all the things")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with selenium, chromium and chromium-driver (see .ci/run)");
    let mut to_script = script.stdin.take().unwrap();
    let mut from_script = BufReader::new(script.stdout.take().unwrap()).lines();
    // The messages to each address handed to the script so far.
    let mut handed: HashMap<String, usize> = HashMap::new();
    let mut done = false;
    while let Some(line) = from_script.next_line().await.unwrap() {
        let said: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let answer = if said["done"] == true {
            done = true;
            break;
        } else if let Some(step) = said["step"].as_str() {
            eprintln!("browser: {step}");
            continue;
        } else if said["want"] == "mail" {
            let to = said["to"].as_str().unwrap().to_string();
            let n = handed.entry(to.clone()).or_default();
            let text = p.nth_mail_to(&to, *n).await;
            *n += 1;
            json!({ "body": text })
        } else if said["want"] == "smtp" {
            let from = said["from_ip"].as_str().unwrap();
            let rcpt = said["rcpt"].as_str().unwrap();
            let codes = send_from(&p.relay, from, &[rcpt]).await;
            json!({ "code": codes.last().copied().unwrap_or(0), "codes": codes })
        } else {
            panic!("the script asked for something unknown: {line}");
        };
        to_script
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .unwrap();
        to_script.flush().await.unwrap();
    }
    let status = script.wait().await.unwrap();
    assert!(
        done && status.success(),
        "the browser flow failed ({status}); see target/portal-screenshots/failure.png and the output above"
    );
    for shot in [
        "01-signin.png",
        "04-request-form.png",
        "07-review-request.png",
        "09-confirm-delete.png",
        "10-relays-phone.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} was not saved");
    }
    // What the browser did is what happened: the registration came and went.
    let history = p.relay.command(&["registry", "history", PRINTER]);
    let history = String::from_utf8_lossy(&history.stdout);
    for action in ["request", "approve", "remove"] {
        assert!(history.contains(action), "{action}: {history}");
    }
}
