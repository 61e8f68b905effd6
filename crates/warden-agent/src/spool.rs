//! Delivering the local audit spool to the server.
//!
//! The spool is the JSONL audit log that sessions write (durably) under `WARDEN_HOME`.
//! The agent reads complete lines from its cursor, uploads them in batches, and only
//! after the server acknowledged a batch writes the new cursor (fsynced). A crash of
//! either side before that means the batch is sent again; the server keeps each event
//! id once, so nothing is lost and nothing is stored twice.

use crate::error::AgentError;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How far the spool has been delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Bytes of the spool acknowledged by the server.
    pub offset: u64,
    /// The spool file's inode when the offset was written: a new file starts at 0.
    pub inode: u64,
}

/// What one delivery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub batches: u64,
    pub events: u64,
    /// Newly stored by the server (the rest it already had).
    pub stored: u64,
    /// Lines that were not JSON and could not be delivered.
    pub skipped: u64,
    /// Bytes of complete lines not yet delivered after this pass.
    pub pending_bytes: u64,
}

pub(crate) fn load_cursor(path: &Path) -> Result<Cursor, AgentError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| AgentError::corrupt(path, format!("not a spool cursor: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(AgentError::io(path, e)),
    }
}

pub(crate) fn save_cursor(path: &Path, c: &Cursor) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec(c).map_err(|e| AgentError::corrupt(path, e.to_string()))?;
    crate::node::write_atomic(path, &bytes, 0o600)
}

/// One batch read from the spool.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub events: Vec<serde_json::Value>,
    /// The cursor after this batch.
    pub next: Cursor,
    pub skipped: u64,
    /// Whether the file has more complete lines after this batch.
    pub more: bool,
}

/// Read up to `max` complete lines from `cursor`.
pub(crate) fn read_batch(spool: &Path, cursor: Cursor, max: usize) -> Result<Batch, AgentError> {
    let mut file = match std::fs::File::open(spool) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Batch {
                next: cursor,
                ..Batch::default()
            });
        }
        Err(e) => return Err(AgentError::io(spool, e)),
    };
    let meta = file.metadata().map_err(|e| AgentError::io(spool, e))?;
    let mut start = cursor;
    if meta.ino() != cursor.inode || meta.len() < cursor.offset {
        // A new or truncated spool: deliver it from the start (ids deduplicate).
        start = Cursor {
            offset: 0,
            inode: meta.ino(),
        };
    }
    file.seek(SeekFrom::Start(start.offset))
        .map_err(|e| AgentError::io(spool, e))?;
    // Read at most 8 MiB per batch; lines past it wait for the next one.
    let mut buf = Vec::new();
    file.take(8 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| AgentError::io(spool, e))?;
    let mut batch = Batch {
        next: start,
        ..Batch::default()
    };
    let mut pos = 0usize;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        if batch.events.len() >= max {
            batch.more = true;
            break;
        }
        let line = &buf[pos..pos + nl];
        pos += nl + 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(trimmed) {
            Ok(v)
                if v.get("id")
                    .and_then(|i| i.as_str())
                    .is_some_and(|s| !s.is_empty()) =>
            {
                batch.events.push(v)
            }
            _ => batch.skipped += 1,
        }
    }
    batch.next.offset = start.offset + pos as u64;
    Ok(batch)
}
