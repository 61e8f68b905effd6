//! Readers. The log is append-only and written in whole lines, so a reader trusts
//! complete lines and treats a final line without its newline as either still being
//! written (when following) or torn by a crash (when reading a snapshot). A garbled
//! line is reported and skipped: one bad line must never hide the events after it.

use crate::error::AuditError;
use crate::event::Event;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One event and the exact line it was read from (without the newline).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub event: Event,
    pub line: String,
}

/// A line that was not a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number in the file.
    pub line: u64,
    /// Why it was skipped: the parser's message, which names a position and may
    /// quote a short value from the line (the log holds no secrets by construction).
    pub reason: String,
}

/// What a read found besides events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Complete lines read, including skipped ones.
    pub lines: u64,
    /// Garbled lines (not counting a torn last line).
    pub skipped: Vec<Skipped>,
    /// The file ended in a partial line that does not parse: a write interrupted by
    /// a crash. It was ignored.
    pub torn_tail: bool,
}

/// Read every event in the file. A torn last line is reported in
/// [`ReadReport::torn_tail`] and ignored; a garbled line elsewhere is reported in
/// [`ReadReport::skipped`] and the lines after it are still read.
pub fn read_events(path: &Path) -> Result<(Vec<Event>, ReadReport), AuditError> {
    let mut reader = LogReader::open(path)?;
    let mut events = Vec::new();
    reader.read_new(|entry| events.push(entry.event))?;
    let report = reader.finish(|entry| events.push(entry.event));
    Ok((events, report))
}

/// An incremental reader: call [`LogReader::read_new`] repeatedly to follow a log
/// as it grows (`warden audit tail`).
pub struct LogReader {
    path: PathBuf,
    file: File,
    /// Bytes after the last newline: a line still being written.
    pending: Vec<u8>,
    /// Bytes consumed from the file so far.
    offset: u64,
    report: ReadReport,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    pub fn open(path: &Path) -> Result<LogReader, AuditError> {
        let file = File::open(path).map_err(|source| AuditError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(LogReader {
            path: path.to_path_buf(),
            file,
            pending: Vec::new(),
            offset: 0,
            report: ReadReport::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Call `each` for every complete event line appended since the last call, in
    /// file order. A final line without its newline is kept back until it is
    /// completed. Returns how many events were passed to `each`.
    pub fn read_new(&mut self, mut each: impl FnMut(Entry)) -> Result<u64, AuditError> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut count = 0;
        loop {
            let n = match self.file.read(&mut chunk) {
                Ok(0) => return Ok(count),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(AuditError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            self.offset += n as u64;
            let mut data = &chunk[..n];
            while let Some(pos) = data.iter().position(|&b| b == b'\n') {
                let (head, rest) = data.split_at(pos);
                data = &rest[1..];
                let line = if self.pending.is_empty() {
                    head.to_vec()
                } else {
                    let mut line = std::mem::take(&mut self.pending);
                    line.extend_from_slice(head);
                    line
                };
                self.report.lines += 1;
                if let Some(entry) = self.parse(line) {
                    count += 1;
                    each(entry);
                }
            }
            self.pending.extend_from_slice(data);
        }
    }

    /// Whether the file at the path is no longer the one being read (rotated or
    /// replaced) or was truncated below what was read. When it was, reopen it from
    /// the start; the caller should drain the old handle with `read_new` first.
    pub fn reopen_if_replaced(&mut self) -> Result<bool, AuditError> {
        let read_err = |source| AuditError::Read {
            path: self.path.clone(),
            source,
        };
        let now = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // Gone for the moment (being rotated): keep the old handle.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(read_err(e)),
        };
        let ours = self.file.metadata().map_err(read_err)?;
        let replaced = now.ino() != ours.ino() || now.dev() != ours.dev();
        let truncated = now.len() < self.offset;
        if !(replaced || truncated) {
            return Ok(false);
        }
        *self = LogReader::open(&self.path)?;
        Ok(true)
    }

    /// What was found so far.
    pub fn report(&self) -> &ReadReport {
        &self.report
    }

    /// End of a snapshot read: a kept-back final line is an event if it parses (the
    /// newline was lost, the object is whole) and a torn write otherwise.
    pub fn finish(mut self, each: impl FnOnce(Entry)) -> ReadReport {
        let line = std::mem::take(&mut self.pending);
        if !line.iter().all(u8::is_ascii_whitespace) {
            match parse_line(&line) {
                Ok(entry) => {
                    self.report.lines += 1;
                    each(entry);
                }
                Err(_) => self.report.torn_tail = true,
            }
        }
        self.report
    }

    fn parse(&mut self, line: Vec<u8>) -> Option<Entry> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        match parse_line(&line) {
            Ok(entry) => Some(entry),
            Err(reason) => {
                self.report.skipped.push(Skipped {
                    line: self.report.lines,
                    reason,
                });
                None
            }
        }
    }
}

fn parse_line(line: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    let event = serde_json::from_str::<Event>(text).map_err(|e| e.to_string())?;
    Ok(Entry {
        event,
        line: text.trim_end_matches('\r').to_string(),
    })
}
