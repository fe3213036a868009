//! `[log] format = "maillog"`: lines as Postfix writes them to syslog's mail log,
//! `Mon DD HH:MM:SS HOST sluice/COMPONENT[PID]: TEXT`, so that pflogsumm and the other
//! analysers postmasters already run read the relay's log (`--syslog-name=sluice`).
//!
//! The component is Postfix's name for the part that speaks (see [`mail`](super::mail):
//! `smtpd` for sessions, `cleanup` and `qmgr` for the queue, `smtp` for delivery); any
//! other event is named by the last part of its target. Warnings and errors begin with
//! `warning:` and `error:`, as Postfix's do; fields follow the text as `name=value`.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The formatter; `host` is the name on every line.
pub struct Maillog {
    pub host: String,
    pub pid: u32,
}

impl<S, N> FormatEvent<S, N> for Maillog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let component = meta.target().rsplit("::").next().unwrap_or("sluice");
        let now = chrono::Local::now().format("%b %e %H:%M:%S");
        write!(
            writer,
            "{now} {} sluice/{component}[{}]: ",
            self.host, self.pid
        )?;
        match *meta.level() {
            Level::ERROR => writer.write_str("error: ")?,
            Level::WARN => writer.write_str("warning: ")?,
            _ => {}
        }
        let mut line = Line::default();
        event.record(&mut line);
        writer.write_str(&line.message)?;
        writer.write_str(&line.fields)?;
        writeln!(writer)
    }
}

/// An event's message, and its other fields as ` name=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
