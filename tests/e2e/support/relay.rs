//! The real `sluice` binary, started on a free port with a configuration of the test's own.

use super::{PATIENCE, free_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// A point in a relay's log (its length in bytes when taken, from [`Relay::log_mark`]):
/// a wait from a mark sees only lines written after it, so a line an earlier step wrote
/// cannot stand in for the one a later step causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark(u64);

impl LogMark {
    /// The log's beginning: everything the relay ever logged counts.
    pub const START: LogMark = LogMark(0);
}

/// A running relay in its own directory (configuration, spool, policies, log).
pub struct Relay {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The umask the relay is started with; none: the test's own.
    umask: Option<libc::mode_t>,
    /// More environment for the relay's process.
    env: Vec<(String, String)>,
}

/// How to start a relay.
#[derive(Default, Clone)]
pub struct RelayOptions {
    /// The next hop (`[delivery] smarthost`).
    pub smarthost: Option<SocketAddr>,
    /// More TOML for the configuration file, added at the end (`[limits]` etc.).
    pub extra: String,
    /// Top-level keys (`postmaster = ...`), written before the first table.
    pub top: String,
    /// Contents of `policies.d/policies.toml`; none means the default chain.
    pub policies: Option<String>,
    /// Module files copied into `policies.d/` before the start: `(file name, source)`.
    pub modules: Vec<(String, PathBuf)>,
    /// `[delivery] retry_intervals`; none means one second.
    pub retry_intervals: Option<&'static str>,
    /// `[policies] settle`; none means the default.
    pub settle: Option<&'static str>,
    /// `[policies] cache_dir`, for relays that share compiled modules (large ones take
    /// seconds to compile); none: each relay's own, in its spool.
    pub cache_dir: Option<PathBuf>,
    /// The umask to start the relay with (every restart too); none: the test's own.
    pub umask: Option<libc::mode_t>,
    /// More environment for the relay's process (every restart too).
    pub env: Vec<(String, String)>,
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
            "hostname = \"relay.test\"\n{top}\n\
             [[listener]]\naddr = \"{addr}\"\n\
             [spool]\ndir = \"{spool}\"\n\
             [policies]\ndir = \"{policies}\"\nsettle = \"{settle}\"\n{cache}\
             [delivery]\n{smarthost}retry_intervals = [\"{retry}\"]\n\
             {extra}\n",
            spool = dir.path().join("spool").display(),
            policies = dir.path().join("policies.d").display(),
            extra = options.extra,
            top = options.top,
            retry = options.retry_intervals.unwrap_or("1s"),
            settle = options.settle.unwrap_or("50ms"),
            cache = options
                .cache_dir
                .as_ref()
                .map(|d| format!("cache_dir = \"{}\"\n", d.display()))
                .unwrap_or_default(),
        );
        std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
        let mut relay = Relay {
            addr,
            dir,
            child: None,
            umask: options.umask,
            env: options.env,
        };
        relay.spawn().await;
        relay
    }

    /// The relay's spool (`spool` in its own directory; the cache, the store and the
    /// control socket are in it too).
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
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
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("SLUICE_LOG", "info,sluice=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe and cannot fail: fit for the child
            // between fork and exec, where it changes the child's mask alone.
            unsafe {
                command.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("start sluice");
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

    /// SIGTERM, as systemd stops a service; how the process ended.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        let mut child = self.child.take().expect("the relay runs");
        child.wait().expect("the relay's exit")
    }

    /// Sends SIGTERM and returns at once (see [`Relay::exited`]).
    pub fn send_sigterm(&self) {
        self.send_signal(libc::SIGTERM);
    }

    /// Sends `signal` to the relay.
    pub fn send_signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the relay runs");
        // SAFETY: kill(2) on the child's own pid, which it keeps until waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    }

    /// Waits for the relay to exit, without holding up the test's other tasks.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the relay runs");
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("the relay's exit") {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the relay did not exit"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Kills the relay and starts it again on the same spool and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The relay's log file (one file across restarts: each start appends to it).
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    /// Everything the relay has logged so far.
    pub fn log(&self) -> String {
        self.log_since(LogMark::START)
    }

    /// The log's end as it is now. Take it *before* the action whose line a test waits
    /// for: a line written between the action and the wait is then still seen, and a line
    /// an earlier step wrote is not.
    pub fn log_mark(&self) -> LogMark {
        LogMark(
            std::fs::metadata(self.log_path())
                .map(|m| m.len())
                .unwrap_or(0),
        )
    }

    /// What the relay has logged since `mark`.
    pub fn log_since(&self, mark: LogMark) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let from = usize::try_from(mark.0).map_or(bytes.len(), |m| m.min(bytes.len()));
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Waits until the log contains `needle`; panics after [`PATIENCE`]. Returns the whole
    /// log. Only for a line that nothing before the step waited for could have written;
    /// otherwise use [`Relay::wait_for_log_after`].
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_count(LogMark::START, needle, 1).await
    }

    /// Waits until what was logged after `mark` contains `needle`; panics after
    /// [`PATIENCE`]. Returns the log since `mark`.
    pub async fn wait_for_log_after(&self, mark: LogMark, needle: &str) -> String {
        self.wait_for_log_count(mark, needle, 1).await
    }

    /// Waits until what was logged after `mark` contains `needle` at least `count` times
    /// (a counted line: the second attempt, the third reload); panics after [`PATIENCE`].
    /// Returns the log since `mark`.
    pub async fn wait_for_log_count(&self, mark: LogMark, needle: &str, count: usize) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log_since(mark);
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the log never said {needle:?} {count} time(s) after byte {}:\n{log}",
                mark.0
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

    /// Waits until exactly `n` messages wait in the spool; panics after [`PATIENCE`].
    /// Zero is the definite end of delivery: every message the relay took has been
    /// delivered, bounced or dropped, and nothing more will come of it.
    pub async fn wait_for_queued(&self, n: usize) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let queued = self.queued();
            if queued == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queued} messages stayed in the queue, expected {n}:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `dir/sluice.toml` for a relay not started by [`Relay`]: one listener on a free
/// port, its spool in `dir`, its policies in `policies`, with `policies_extra` lines in
/// `[policies]`. Returns the file's path.
pub fn write_config(dir: &Path, policies: &Path, policies_extra: &str) -> PathBuf {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[spool]\ndir = \"{}\"\n[policies]\ndir = \"{}\"\n{policies_extra}",
            dir.join("spool").display(),
            policies.display()
        ),
    )
    .unwrap();
    config
}

/// Runs `sluice serve --config CONFIG` for a relay that must refuse to start: whether it
/// ran to success, and what it said on stderr.
pub fn serve_refused(config: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .expect("run sluice serve");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
