//! The relay's log writer: every line it writes is one line, whatever a client or a module
//! put in a field.
//!
//! Fields carry what clients sent (a HELO name, an address, a user name, a reply text that
//! quotes a command); a NUL, a CR or a newline among them would cut a log line in two or
//! forge one for the tools that read the log, and an escape sequence would reach the
//! postmaster's terminal. Rather than trust every call site to escape its fields, the
//! writer escapes control characters in the whole formatted line, keeping only the line's
//! own end, tabs, and (on a terminal) the colour codes the formatter itself writes.
//!
//! Here too: starting the log in the configured format and place ([`init`]), reopening
//! its file for logrotate ([`reopen`]), the mail lines in each format ([`mail`]), and
//! Postfix's maillog format ([`maillog`]).

pub mod mail;
mod maillog;

use crate::config::{LogConfig, LogFormat};
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Starts the log: `[log] format` and `file` as configured, `SLUICE_LOG` (else
/// `default_filter`) choosing what is written. `host` names the relay on maillog lines.
pub fn init(default_filter: &str, log: &LogConfig, host: &str) -> io::Result<()> {
    let filter = match std::env::var("SLUICE_LOG") {
        Ok(from_env) => EnvFilter::new(from_env),
        Err(_) => filter(log.level.as_deref().unwrap_or(default_filter))?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let file = match &log.file {
        Some(path) => {
            let file = Arc::new(LogFile::open(path.clone())?);
            let _ = LOG_FILE.set(file.clone());
            Some(file)
        }
        None => None,
    };
    // Colours for a person at a terminal; never in a file or for a machine's format.
    let colours = file.is_none() && log.format == LogFormat::Text && io::stderr().is_terminal();
    let writer = move || {
        let output = match &file {
            Some(file) => Output::File(file.clone()),
            None => Output::Stderr(io::stderr()),
        };
        Escaping::new(output, colours)
    };
    mail::set_format(log.format);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(colours);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match log.format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Maillog => registry
            .with(lines.event_format(maillog::Maillog {
                host: host.to_string(),
                pid: std::process::id(),
            }))
            .try_init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).try_init(),
    };
    installed.map_err(io::Error::other)
}

/// The filter in force, which a reload can replace.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `[log] level` read as a filter.
fn filter(level: &str) -> io::Result<EnvFilter> {
    EnvFilter::try_new(level).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("log.level {level:?}: {e}"),
        )
    })
}

/// Is `level` a filter the log can use (`[log] level`)?
pub fn check_level(level: &str) -> io::Result<()> {
    filter(level).map(|_| ())
}

/// Logs from now on what `level` says (`[log] level`, reloaded); says what was done.
/// `SLUICE_LOG`, when set, keeps the last word.
pub fn set_level(level: Option<&str>) -> io::Result<String> {
    if std::env::var_os("SLUICE_LOG").is_some() {
        return Ok("log level kept: SLUICE_LOG is set".into());
    }
    let level = level.unwrap_or("info");
    let filter = filter(level)?;
    match FILTER.get() {
        Some(handle) => handle.reload(filter).map_err(io::Error::other)?,
        None => return Ok("no log to change".into()),
    }
    Ok(format!("log level {level}"))
}

/// The log file, when the log goes to one.
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

/// Opens the log file again under its name (after logrotate renamed it); `false` when the
/// log goes to stderr.
pub fn reopen() -> io::Result<bool> {
    match LOG_FILE.get() {
        Some(file) => file.reopen().map(|()| true),
        None => Ok(false),
    }
}

/// A log file appended to, which can be opened again under its name.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: PathBuf) -> io::Result<LogFile> {
        let file = Self::append(&path)?;
        Ok(LogFile {
            path,
            file: Mutex::new(file),
        })
    }

    fn append(path: &PathBuf) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("log.file {}: {e}", path.display())))
    }

    fn reopen(&self) -> io::Result<()> {
        let file = Self::append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }
}

/// Where the lines go.
enum Output {
    Stderr(io::Stderr),
    /// Each formatted line is one write: under the lock, lines never interleave.
    File(Arc<LogFile>),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stderr(stderr) => stderr.write(buf),
            Output::File(file) => {
                let mut file = file.file.lock().unwrap_or_else(|e| e.into_inner());
                file.write_all(buf)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stderr(stderr) => stderr.flush(),
            Output::File(_) => Ok(()),
        }
    }
}

/// Wraps a writer so that each formatted event reaches it with control characters escaped.
pub struct Escaping<W> {
    inner: W,
    /// Keep `ESC [ … m` (SGR colour) sequences: the formatter colours a terminal's log.
    colours: bool,
}

impl<W: Write> Escaping<W> {
    pub fn new(inner: W, colours: bool) -> Self {
        Self { inner, colours }
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Most lines hold nothing to escape: they go out as they are, without a copy.
        if needs_no_escaping(buf) {
            self.inner.write_all(buf)?;
        } else {
            self.inner.write_all(escape(buf, self.colours).as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `text` with every control character but tab and the final newline written as `\xNN`
/// (`\u{NN}` for C1 controls); `colours`: SGR sequences are kept as they are.
pub fn escape(text: &[u8], colours: bool) -> String {
    let text = String::from_utf8_lossy(text);
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (&*text, ""),
    };
    let mut out = String::with_capacity(body.len() + end.len());
    let mut rest = body;
    while let Some(c) = rest.chars().next() {
        if let Some(len) = sgr_len(rest).filter(|_| colours) {
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out.push_str(end);
    out
}

/// Has `line` no control character but tabs and its final newline? (0xC2 leads every C1
/// control in UTF-8, so a line without it has none.)
fn needs_no_escaping(line: &[u8]) -> bool {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    !body
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2)
}

/// The length of the SGR sequence (`ESC [ digits;… m`) `text` starts with, if it does.
fn sgr_len(text: &str) -> Option<usize> {
    let params = text.strip_prefix("\x1b[")?;
    let digits = params
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (params.as_bytes().get(digits) == Some(&b'm')).then_some(2 + digits + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_cut_or_forge_a_line() {
        let line = b"helo=evil\0name\r\nFeb 1 sluice: forged\x1b]0;title\x07 ok\n";
        let escaped = escape(line, false);
        assert_eq!(
            escaped,
            "helo=evil\\x00name\\x0d\\x0aFeb 1 sluice: forged\\x1b]0;title\\x07 ok\n"
        );
        assert_eq!(escaped.matches('\n').count(), 1);
        assert_eq!(escape("c1:\u{9b}31m".as_bytes(), false), "c1:\\u{9b}31m");
        assert_eq!(escape(b"tab\tkept", false), "tab\tkept");
    }

    #[test]
    fn a_line_goes_out_unchanged_only_when_there_is_nothing_to_escape() {
        for line in [&b"plain\tline\n"[..], "caf\u{e9} \u{2014}\n".as_bytes()] {
            assert!(needs_no_escaping(line));
            assert_eq!(escape(line, false).as_bytes(), line);
        }
        for line in [
            &b"a\0b\n"[..],
            b"a\rb\n",
            b"\x1b[2J\n",
            "c1:\u{9b}\n".as_bytes(),
        ] {
            assert!(!needs_no_escaping(line), "{line:?}");
        }
    }

    #[test]
    fn a_terminal_keeps_the_formatters_colours_only() {
        let line = b"\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m user=\x1b[2J\n";
        assert_eq!(
            escape(line, true),
            "\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m user=\\x1b[2J\n"
        );
    }
}
