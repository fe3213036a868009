//! The real `sluice` binary, started on a free port with a configuration of the test's own.

use super::{PATIENCE, free_port};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// networks, then `dept.wasm`: the example department policy (examples/phi-guard) for
/// `example.edu`, refusing `[PHI]` mail to outside addresses.
pub const PHI_GUARD_CHAIN: &str = r#"
[[policy]]
name = "networks"
module = "builtin:networks"

[[policy]]
name = "dept"
module = "dept.wasm"
[policy.config]
internal_domains = ["example.edu"]
markers = ["[PHI]"]
"#;

/// A running relay in its own directory (configuration, spool, policies, log).
pub struct Relay {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How to start a relay.
#[derive(Default, Clone)]
pub struct RelayOptions {
    /// The next hop (`[delivery] smarthost`).
    pub smarthost: Option<SocketAddr>,
    /// More TOML for the configuration file, added at the end (`[limits]` etc.).
    pub extra: String,
    /// Contents of `policies.d/policies.toml`; none means the default chain.
    pub policies: Option<String>,
    /// Module files copied into `policies.d/` before the start: `(file name, source)`.
    pub modules: Vec<(String, PathBuf)>,
    /// `[delivery] retry_intervals`; none means one second.
    pub retry_intervals: Option<&'static str>,
    /// `[policies] settle`; none means the default.
    pub settle: Option<&'static str>,
}

impl Relay {
    /// A relay with the default chain, delivering to `sink`.
    pub async fn start(smarthost: SocketAddr) -> Relay {
        Relay::start_with(RelayOptions {
            smarthost: Some(smarthost),
            ..Default::default()
        })
        .await
    }

    /// A relay delivering to `sink` whose chain is `policies` (the text of policies.toml),
    /// with test modules copied in as `(name in policies.d, built module's file name)`.
    pub async fn with_chain(sink: SocketAddr, policies: &str, modules: &[(&str, &str)]) -> Relay {
        Relay::start_with(RelayOptions {
            smarthost: Some(sink),
            policies: Some(policies.to_string()),
            modules: modules
                .iter()
                .map(|(name, file)| (name.to_string(), super::modules::module(file)))
                .collect(),
            ..Default::default()
        })
        .await
    }

    /// A relay whose chain is [`PHI_GUARD_CHAIN`].
    pub async fn with_phi_guard(sink: SocketAddr) -> Relay {
        Relay::with_chain(sink, PHI_GUARD_CHAIN, &[("dept.wasm", "phi_guard.wasm")]).await
    }

    /// A relay started with these options.
    pub async fn start_with(options: RelayOptions) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::create_dir_all(dir.path().join("policies.d")).unwrap();
        if let Some(policies) = &options.policies {
            std::fs::write(dir.path().join("policies.d/policies.toml"), policies).unwrap();
        }
        for (name, source) in &options.modules {
            std::fs::copy(source, dir.path().join("policies.d").join(name)).unwrap();
        }
        let smarthost = options
            .smarthost
            .map(|s| format!("smarthost = \"{s}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "hostname = \"relay.test\"\n\
             [[listener]]\naddr = \"{addr}\"\n\
             [spool]\ndir = \"{spool}\"\n\
             [policies]\ndir = \"{policies}\"\nsettle = \"{settle}\"\n\
             [delivery]\n{smarthost}retry_intervals = [\"{retry}\"]\n\
             {extra}\n",
            spool = dir.path().join("spool").display(),
            policies = dir.path().join("policies.d").display(),
            extra = options.extra,
            retry = options.retry_intervals.unwrap_or("1s"),
            settle = options.settle.unwrap_or("50ms"),
        );
        std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
        let mut relay = Relay {
            addr,
            dir,
            child: None,
        };
        relay.spawn().await;
        relay
    }

    /// The relay's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// The relay's policies directory (`policies.d` in its own directory).
    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies.d")
    }

    /// Runs `sluice ARGS --config <this relay's configuration>` (status, reload, ...).
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("run sluice")
    }

    /// Runs `sluice ARGS --config ...` with `input` on its standard input (a password).
    pub fn command_with_input(&self, args: &[&str], input: &str) -> std::process::Output {
        super::run_with_input(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args)
                .arg("--config")
                .arg(self.config_path()),
            input,
        )
    }

    /// Starts the binary and waits until it accepts connections.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("relay.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("SLUICE_LOG", "info,sluice=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sluice exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sluice did not listen in time:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the relay and starts it again on the same spool and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Everything the relay has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics after [`PATIENCE`].
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Where the listener named `name` listens, as the relay logged it (for listeners
    /// configured on port 0, which cannot be taken by another test in between).
    pub fn listening(&self, name: &str) -> SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!(" name={name} ")) && l.contains("listening on "))
            .unwrap_or_else(|| panic!("no listener {name} in the log:\n{log}"));
        let addr = line.split("listening on ").nth(1).unwrap();
        addr.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Messages waiting in the spool.
    pub fn queued(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("spool/queue"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".state"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}
