//! The parts the end-to-end tests are made of: the real `sluice` binary ([`Relay`]), a
//! real SMTP server that receives what it relays ([`Sink`]), and a raw SMTP client
//! ([`Conn`]) for the protocol details that a mail library would hide.

pub mod conn;
pub mod http;
pub mod modules;
pub mod redis;
pub mod relay;
pub mod sink;

pub use conn::Conn;
pub use relay::Relay;
pub use sink::Sink;

use std::time::Duration;

/// How long a test waits for something that should happen at once (generous, for slow CI).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Runs a Python script (smtplib is the client a great many applications use) and returns
/// what it printed; panics, with its errors, unless it succeeds. `ctx` is defined for the
/// script: a TLS context that accepts the relay's self-signed certificate.
pub async fn python(script: &str) -> String {
    let script = format!(
        "import smtplib, ssl, hashlib\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         {script}"
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
    })
    .await
    .unwrap()
    .expect("run python3 (apt-get install python3)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `command` with `input` on its standard input and returns what it did.
pub fn run_with_input(command: &mut std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("run sluice")
}

/// The lines of `log` that contain `needle`, in order.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The names of the header fields at the top of `data` that are not in `original`:
/// the fields the relay added.
pub fn added_fields(data: &[u8], original: &[u8]) -> Vec<String> {
    assert!(
        data.ends_with(original),
        "the relayed message does not end with the message sent:\n{}",
        String::from_utf8_lossy(data)
    );
    let prefix = String::from_utf8_lossy(&data[..data.len() - original.len()]).into_owned();
    assert!(
        prefix.is_empty() || prefix.ends_with("\r\n"),
        "added fields end mid-line: {prefix:?}"
    );
    prefix
        .split("\r\n")
        .filter(|line| !line.is_empty() && !line.starts_with([' ', '\t']))
        .map(|line| line.split(':').next().unwrap_or_default().to_string())
        .collect()
}
