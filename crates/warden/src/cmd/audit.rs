//! `warden audit`: tail and query the local audit log. The file format, readers and
//! filter live in `warden-audit`; this module parses arguments and prints.

use anyhow::Context;
use std::collections::VecDeque;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use warden_audit::{
    Entry, Filter, LogReader, OffsetDateTime, ParseValueError, ReadReport, Surface, Verdict,
};

/// How often `tail` looks for new events.
const POLL: Duration = Duration::from_millis(200);

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the newest matching events, then follow new ones until interrupted.
    Tail(TailArgs),
    /// Print every matching event and exit (status 0 even when none match).
    Query(QueryArgs),
}

#[derive(clap::Args)]
pub struct TailArgs {
    /// How many of the newest matching events to print before following.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    lines: usize,
    /// Print the newest events and exit instead of following.
    #[arg(long)]
    no_follow: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct Common {
    /// Only events on this surface: session, network, filesystem, credential, mcp.
    #[arg(long, value_name = "S", value_parser = parse_surface)]
    surface: Option<Surface>,
    /// Only events with this decision: allow, deny.
    #[arg(long, value_name = "D", value_parser = parse_decision)]
    decision: Option<Verdict>,
    /// Only events of this session.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Only events at or after T: an RFC 3339 time (2026-11-30T03:00:00Z), a date
    /// (2026-11-30, UTC), or a duration ago (30s, 10m, 2h, 1d, 1w).
    #[arg(long, value_name = "T", value_parser = parse_since)]
    since: Option<OffsetDateTime>,
    /// The audit file to read [default: $WARDEN_HOME/audit.jsonl].
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print the events' raw JSON lines.
    #[arg(long)]
    json: bool,
    /// Query the control plane's central audit log instead of a local file.
    #[arg(
        long,
        value_name = "URL",
        env = "WARDEN_SERVER",
        hide_env_values = true
    )]
    server: Option<String>,
}

fn parse_surface(s: &str) -> Result<Surface, ParseValueError> {
    s.parse()
}

fn parse_decision(s: &str) -> Result<Verdict, ParseValueError> {
    s.parse()
}

fn parse_since(s: &str) -> Result<OffsetDateTime, ParseValueError> {
    warden_audit::parse_since(s, OffsetDateTime::now_utc())
}

impl Common {
    fn filter(&self) -> Filter {
        Filter {
            surface: self.surface,
            decision: self.decision,
            session: self.session.clone(),
            since: self.since,
            ..Filter::default()
        }
    }

    /// The control plane whose central log to query, when `--server`/WARDEN_SERVER
    /// names one; the API token comes from WARDEN_TOKEN (never from argv).
    fn remote(&self) -> anyhow::Result<Option<super::remote::Conn>> {
        let Some(server) = self.server.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let token = std::env::var("WARDEN_TOKEN").unwrap_or_default();
        if token.is_empty() {
            anyhow::bail!(
                "--server {server} needs an API token (admin or auditor) in WARDEN_TOKEN; \
                 unset WARDEN_SERVER or drop --server to read the local log"
            );
        }
        Ok(Some(super::remote::Conn {
            server: server.to_string(),
            token,
        }))
    }

    /// The local file to read.
    fn local_file(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(crate::home::default_audit_file)
    }
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        Command::Tail(args) => tail(&args),
        Command::Query(args) => query(&args.common),
    };
    match result {
        // `warden audit query | head` closing the pipe is a normal way to stop.
        Err(err)
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

fn query(common: &Common) -> anyhow::Result<ExitCode> {
    if let Some(conn) = common.remote()? {
        let params = warden_control::api::AuditParams {
            surface: common.surface.map(|s| s.to_string()),
            decision: common.decision.map(|d| d.to_string()),
            session: common.session.clone(),
            since: common.since.map(warden_audit::format_time),
            ..Default::default()
        };
        return super::remote::audit_query(&conn, &params);
    }
    let path = common.local_file();
    let Some(mut reader) = open(&path)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let filter = common.filter();
    let mut out = Printer::new(common.json, BufWriter::new(io::stdout().lock()));
    let mut failed: Option<io::Error> = None;
    let mut print = |entry: Entry| {
        if failed.is_none() && filter.matches(&entry.event) {
            failed = out.print(&entry).err();
        }
    };
    reader.read_new(&mut print)?;
    let report = reader.finish(&mut print);
    if let Some(err) = failed {
        return Err(err.into());
    }
    out.flush()?;
    warn_report(&path, &report, 0);
    Ok(ExitCode::SUCCESS)
}

fn tail(args: &TailArgs) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    if common
        .server
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        anyhow::bail!(
            "following the central log is not supported yet; use `warden audit query --server URL`"
        );
    }
    let path = common.local_file();
    let filter = common.filter();
    let follow = !args.no_follow;
    let mut out = Printer::new(common.json, io::stdout().lock());

    let mut reader = match open(&path)? {
        Some(reader) => reader,
        None if !follow => return Ok(ExitCode::SUCCESS),
        // Like `tail -F`: wait for the first session to create it.
        None => loop {
            std::thread::sleep(POLL);
            if path.exists() {
                break LogReader::open(&path)
                    .with_context(|| format!("reading the audit log {}", path.display()))?;
            }
        },
    };

    let mut newest: VecDeque<Entry> = VecDeque::with_capacity(args.lines.min(4096));
    let mut keep = |entry: Entry| {
        if args.lines > 0 && filter.matches(&entry.event) {
            if newest.len() == args.lines {
                newest.pop_front();
            }
            newest.push_back(entry);
        }
    };
    reader.read_new(&mut keep)?;
    if !follow {
        let report = reader.finish(&mut keep);
        for entry in &newest {
            out.print(entry)?;
        }
        out.flush()?;
        warn_report(&path, &report, 0);
        return Ok(ExitCode::SUCCESS);
    }
    for entry in &newest {
        out.print(entry)?;
    }
    out.flush()?;
    drop(newest);

    // Follow until interrupted; a partial last line is held back until complete.
    let mut warned = 0;
    loop {
        warn_report(&path, reader.report(), warned);
        warned = reader.report().skipped.len();
        std::thread::sleep(POLL);
        let mut fresh = Vec::new();
        reader.read_new(|entry| {
            if filter.matches(&entry.event) {
                fresh.push(entry);
            }
        })?;
        if reader.reopen_if_replaced()? {
            eprintln!(
                "warden: {} was replaced; reading it from the start",
                path.display()
            );
            warned = 0;
            reader.read_new(|entry| {
                if filter.matches(&entry.event) {
                    fresh.push(entry);
                }
            })?;
        }
        for entry in &fresh {
            out.print(entry)?;
        }
        out.flush()?;
    }
}

/// Open the log, or say on stderr that there is none yet (not an error: a machine
/// that has run no session has no audit log).
fn open(path: &Path) -> anyhow::Result<Option<LogReader>> {
    if !path.exists() {
        eprintln!("warden: no audit log at {} yet", path.display());
        return Ok(None);
    }
    LogReader::open(path)
        .map(Some)
        .with_context(|| format!("reading the audit log {}", path.display()))
}

/// Tell the user about unreadable lines (skipping those already reported).
fn warn_report(path: &Path, report: &ReadReport, already: usize) {
    for skipped in report.skipped.iter().skip(already) {
        eprintln!(
            "warden: {}:{}: skipped a line that is not an audit event ({})",
            path.display(),
            skipped.line,
            printable(&skipped.reason)
        );
    }
    if report.torn_tail {
        eprintln!(
            "warden: {}: ignored an incomplete last line (a write interrupted by a crash)",
            path.display()
        );
    }
}

struct Printer<W: Write> {
    out: W,
    json: bool,
    color: bool,
}

impl<W: Write> Printer<W> {
    fn new(json: bool, out: W) -> Self {
        let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Printer { out, json, color }
    }

    fn print(&mut self, entry: &Entry) -> io::Result<()> {
        if self.json {
            return writeln!(self.out, "{}", entry.line);
        }
        let e = &entry.event;
        let decision = match (e.decision, e.enforced) {
            (Verdict::Allow, _) => "allow",
            (Verdict::Deny, true) => "DENY",
            (Verdict::Deny, false) => "DENY(audit)",
        };
        let decision = if self.color && e.decision == Verdict::Deny {
            format!("\x1b[1;31m{decision:<11}\x1b[0m")
        } else {
            format!("{decision:<11}")
        };
        let line = format!(
            "{}  {:<10}  {}  {:<12}  {:<40}  {:<16}  {}",
            warden_audit::format_time(e.time),
            e.surface.as_str(),
            decision,
            printable(&e.action),
            printable(&e.target),
            printable(&e.rule),
            printable(&e.reason),
        );
        writeln!(self.out, "{}", line.trim_end())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Targets and reasons come from what the agent asked for; escape control and
/// bidirectional-override characters so a crafted host name or path cannot move the
/// cursor, recolour the terminal or disguise itself in the output.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("a.example:443"), "a.example:443");
        assert_eq!(printable("x\x1b[2Jy"), "x\\u{1b}[2Jy");
        assert_eq!(printable("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(printable("line\nbreak"), "line\\u{a}break");
    }
}
