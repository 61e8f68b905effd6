//! The durable writer. An appender serializes its event and writes the line to the
//! file itself, with one `O_APPEND` write, before [`AuditLog::record`] returns: from
//! then on the event survives a crash of this process (it is in the kernel's page
//! cache). One writer thread fsyncs: within [`MAX_DELAY`] of the oldest unsynced
//! event, or at once when someone waits for an event to be durable, and then wakes
//! the waiters (group commit). Nobody else ever fsyncs, so N concurrent durable
//! records cost about one fsync, not N.

use crate::error::AuditError;
use crate::event::{Event, Stamp};
use std::fs::{DirBuilder, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest time a written event waits for its fsync when nobody is waiting for it
/// (SPEC §5: "at most ~100 ms of batching").
const MAX_DELAY: Duration = Duration::from_millis(90);

struct State {
    /// When the oldest event written but not yet in an fsync was written: the
    /// batching deadline runs from it. `None`: nothing is waiting for an fsync.
    oldest: Option<Instant>,
    /// Sequence number of the last event written (1-based).
    queued: u64,
    /// Every event with a sequence number up to this one is fsynced.
    durable: u64,
    /// The highest sequence number someone is blocked on; commit without delay while
    /// it is above `durable`.
    wanted: u64,
    closing: bool,
    writer_alive: bool,
    /// Sticky: after a failed write or fsync the file's state is unknown, so nothing
    /// more is written and every caller hears about it.
    failed: Option<Arc<io::Error>>,
    /// Tasks awaiting a [`Durable`]: all woken after every commit (or failure), and
    /// each re-registers if its event is not on disk yet.
    wakers: Vec<Waker>,
}

struct Shared {
    path: PathBuf,
    /// Opened for appending: appenders write to it, the writer thread fsyncs it.
    file: File,
    state: Mutex<State>,
    /// Wakes the writer: first bytes queued, someone waiting, closing.
    to_writer: Condvar,
    /// Wakes waiters after each commit (or failure).
    to_waiters: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data whose invariants hold between statements; a
        // panic elsewhere cannot leave it half-updated, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some` once event `seq` is on disk or can no longer get there; otherwise asks
    /// the writer to commit now rather than at the end of its batching window.
    fn check_durable(&self, st: &mut State, seq: u64) -> Option<Result<(), AuditError>> {
        if st.durable >= seq {
            return Some(Ok(()));
        }
        if let Some(err) = &st.failed {
            return Some(Err(AuditError::Write {
                path: self.path.clone(),
                source: Arc::clone(err),
            }));
        }
        if !st.writer_alive {
            return Some(Err(AuditError::Closed {
                path: self.path.clone(),
            }));
        }
        if st.wanted < seq {
            st.wanted = seq;
            self.to_writer.notify_one();
        }
        None
    }

    fn wait_durable(&self, seq: u64) -> Result<(), AuditError> {
        let mut st = self.lock();
        loop {
            if let Some(done) = self.check_durable(&mut st, seq) {
                return done;
            }
            st = self
                .to_waiters
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Owns the writer thread; the last [`AuditLog`] clone to go drains and joins it.
struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.to_writer.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panicked writer already marked itself dead; nothing more to report
            // from a destructor.
            let _ = thread.join();
        }
    }
}

/// A durable, append-only JSONL audit log. Cheap to clone; all clones share one
/// writer thread. Dropping the last clone writes and fsyncs everything queued; call
/// [`AuditLog::flush`] first to learn whether that succeeded.
#[derive(Clone)]
pub struct AuditLog {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.handle.shared.path)
            .finish_non_exhaustive()
    }
}

/// A written event. [`Ticket::wait`] blocks until it is fsynced; dropping the ticket
/// leaves it to the ~100 ms group commit.
#[must_use = "drop the ticket to not wait, or call wait() to block until the event is on disk"]
pub struct Ticket {
    shared: Arc<Shared>,
    seq: u64,
    id: String,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("seq", &self.seq)
            .finish()
    }
}

impl Ticket {
    /// The id the event was recorded under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Block until this event is fsynced. Asks the writer to commit now rather than
    /// at the end of its batching window. An error means the event may not be on
    /// disk: treat it as not recorded.
    pub fn wait(self) -> Result<(), AuditError> {
        self.shared.wait_durable(self.seq)
    }

    /// [`Ticket::wait`] for async code: a future that resolves once this event is
    /// fsynced, without blocking a thread. The commit starts now (not when the future
    /// is first polled), so the fsync runs while the caller does other work — e.g.
    /// forwards the action the event records — and concurrent tickets share one fsync.
    pub fn durable(self) -> Durable {
        self.shared.check_durable(&mut self.shared.lock(), self.seq);
        Durable {
            shared: self.shared,
            seq: self.seq,
        }
    }
}

/// Resolves once one event is fsynced, or with the error that kept it off the disk
/// (then treat the event as not recorded). See [`Ticket::durable`].
#[must_use = "a Durable does nothing unless awaited"]
pub struct Durable {
    shared: Arc<Shared>,
    seq: u64,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("seq", &self.seq).finish()
    }
}

impl Future for Durable {
    type Output = Result<(), AuditError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = &self.shared;
        let mut st = shared.lock();
        if let Some(done) = shared.check_durable(&mut st, self.seq) {
            return Poll::Ready(done);
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl AuditLog {
    /// Open (creating it 0600, and missing parent directories 0700) the log at `path`
    /// for appending, and start its writer thread. Several processes may append to
    /// the same file: each commit is a single `O_APPEND` write of whole lines.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(open_err)?;
        }
        let mut options = OpenOptions::new();
        options.read(true).append(true).mode(0o600);
        // Create the file only if it is new, so the directory is fsynced only then:
        // that fsync costs milliseconds, and every session start opens the log.
        let (mut file, created) = match options.clone().create_new(true).open(path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (options.open(path).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        terminate_torn_line(&mut file).map_err(open_err)?;
        if let (true, Some(parent)) = (created, parent) {
            // Make the new file's directory entry durable too. Some filesystems do
            // not support fsync on directories; the file's own fsyncs still hold.
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }

        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            file,
            state: Mutex::new(State {
                oldest: None,
                queued: 0,
                durable: 0,
                wanted: 0,
                closing: false,
                writer_alive: true,
                failed: None,
                wakers: Vec::new(),
            }),
            to_writer: Condvar::new(),
            to_waiters: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("warden-audit-writer".into())
                .spawn(move || writer(shared))
                .map_err(|source| AuditError::Spawn {
                    path: path.to_path_buf(),
                    source,
                })?
        };
        Ok(AuditLog {
            handle: Arc::new(Handle {
                shared,
                thread: Some(thread),
            }),
        })
    }

    /// The file this log appends to.
    pub fn path(&self) -> &Path {
        &self.handle.shared.path
    }

    /// Stamp `event` (time, a new id, session, machine, user, policy) and write it to
    /// the file. Returns once written: a crash of this process no longer loses it. It
    /// is fsynced within about 100 ms, or as soon as someone waits on the returned
    /// ticket. Fails if this or an earlier write failed.
    pub fn record(&self, stamp: &Stamp, mut event: Event) -> Result<Ticket, AuditError> {
        event.stamp(stamp);
        let mut line = serde_json::to_vec(&event).map_err(AuditError::Encode)?;
        line.push(b'\n');
        let id = event.id;

        let shared = &self.handle.shared;
        {
            let st = shared.lock();
            if let Some(err) = &st.failed {
                return Err(AuditError::Write {
                    path: shared.path.clone(),
                    source: Arc::clone(err),
                });
            }
            if !st.writer_alive {
                return Err(AuditError::Closed {
                    path: shared.path.clone(),
                });
            }
        }
        // One O_APPEND write of the whole line, outside the lock: concurrent lines
        // (threads or processes) never interleave. A short write (a full disk) would
        // leave a torn line another write could glue onto, so it is a failure.
        let written = match (&shared.file).write(&line) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", line.len()),
            )),
            Err(e) => Err(e),
        };
        let mut st = shared.lock();
        if let Err(err) = written {
            let err = Arc::new(err);
            st.failed = Some(Arc::clone(&err));
            let wakers = std::mem::take(&mut st.wakers);
            drop(st);
            shared.to_waiters.notify_all();
            shared.to_writer.notify_one();
            wakers.into_iter().for_each(Waker::wake);
            return Err(AuditError::Write {
                path: shared.path.clone(),
                source: err,
            });
        }
        // Counted only once written, so an fsync started after this covers it.
        st.queued += 1;
        let seq = st.queued;
        let first = st.oldest.is_none();
        if first {
            st.oldest = Some(Instant::now());
        }
        drop(st);
        // The writer sleeps without a deadline while nothing is unsynced; the first
        // event starts its batching clock.
        if first {
            shared.to_writer.notify_one();
        }
        Ok(Ticket {
            shared: Arc::clone(shared),
            seq,
            id,
        })
    }

    /// Record `event` and return only after it is fsynced. Use this where the
    /// session must not continue until the decision is on disk.
    pub fn record_durable(&self, stamp: &Stamp, event: Event) -> Result<(), AuditError> {
        self.record(stamp, event)?.wait()
    }

    /// Block until everything written so far is fsynced. Fails if any write or
    /// fsync has failed.
    pub fn flush(&self) -> Result<(), AuditError> {
        let shared = &self.handle.shared;
        let seq = {
            let st = shared.lock();
            if let Some(err) = &st.failed {
                return Err(AuditError::Write {
                    path: shared.path.clone(),
                    source: Arc::clone(err),
                });
            }
            st.queued
        };
        shared.wait_durable(seq)
    }
}

/// A crash can leave a partial last line. Appending after it would glue the first
/// new event onto the garbage and lose it, so end the torn line first; readers then
/// skip it as one garbled line.
fn terminate_torn_line(file: &mut File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
        file.sync_data()?;
    }
    Ok(())
}

/// Marks the writer dead however its thread ends, so no waiter blocks forever.
struct WriterExit(Arc<Shared>);

impl Drop for WriterExit {
    fn drop(&mut self) {
        let wakers = {
            let mut st = self.0.lock();
            st.writer_alive = false;
            std::mem::take(&mut st.wakers)
        };
        self.0.to_waiters.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }
}

fn writer(shared: Arc<Shared>) {
    let _exit = WriterExit(Arc::clone(&shared));
    let mut st = shared.lock();
    loop {
        // Sleep until there is a reason to fsync.
        loop {
            if st.failed.is_some() {
                return;
            }
            if st.oldest.is_none() {
                if st.closing {
                    return;
                }
                st = shared
                    .to_writer
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            if st.closing || st.wanted > st.durable {
                break;
            }
            let deadline = st.oldest.unwrap_or_else(Instant::now) + MAX_DELAY;
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = shared
                .to_writer
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }

        // Events written from here on start the next batching window.
        st.oldest = None;
        let target = st.queued;
        drop(st);

        let result = shared.file.sync_data();

        st = shared.lock();
        match result {
            Ok(()) => st.durable = st.durable.max(target),
            Err(err) => st.failed = Some(Arc::new(err)),
        }
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        shared.to_waiters.notify_all();
        wakers.into_iter().for_each(Waker::wake);
        st = shared.lock();
    }
}
