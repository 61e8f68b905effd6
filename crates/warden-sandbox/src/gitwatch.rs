//! Files planted in a repository's git directory while a session runs.
//!
//! The session root guards what exists in a git directory (crate::mounts: `.git`
//! pinned, its configuration and hooks read-only). Two files can redirect the host's
//! git to a configuration the agent wrote and do not normally exist, so there is
//! nothing to lay a read-only bind over: `commondir` (git then reads `config` and
//! `hooks/` from the directory it names) and `config.worktree` (read when the
//! repository enables `extensions.worktreeConfig`). A [`GitWatch`] watches each guarded
//! git directory of the session's writable mounts (inotify, from outside the session)
//! and, when one of them appears, removes it and tells the caller, which ends the
//! session: the file existed for the time it took to notice (microseconds), once, and
//! never again in that session. Git itself creates neither in a git directory (a linked
//! worktree's `commondir` lives in `.git/worktrees/<name>/`).

use crate::SandboxSpec;
use crate::mounts;
use rustix::fs::inotify;
use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// What may not appear in a guarded git directory.
const PLANTED: &[&CStr] = &[c"commondir", c"config.worktree"];

/// Watches the session's git directories until dropped.
pub struct GitWatch {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for GitWatch {
    fn drop(&mut self) {
        drop(self.stop.take()); // the thread sees the pipe close
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching the git directories the session root guards (those of repositories
/// at the top of `spec`'s writable mounts and up to two levels below, and their
/// submodules'), as host paths. Each time a [`PLANTED`] file appears in one, it is
/// removed and `on_plant` is called with its path. `Ok(None)`: nothing to watch.
/// Call it before the command runs.
pub fn watch_git(
    spec: &SandboxSpec,
    on_plant: impl Fn(&Path) + Send + 'static,
) -> std::io::Result<Option<GitWatch>> {
    let dirs = git_dirs(spec);
    if dirs.is_empty() {
        return Ok(None);
    }
    let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    let mut watched: HashMap<i32, (OwnedFd, PathBuf)> = HashMap::new();
    for (fd, path) in dirs {
        let via = crate::sys::fd_path("/proc", &fd);
        let flags = inotify::WatchFlags::CREATE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::ONLYDIR;
        let wd = inotify::add_watch(&ino, &via, flags)?;
        watched.insert(wd, (fd, path));
    }
    let (stop_rd, stop_wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let thread = std::thread::Builder::new()
        .name("warden-gitwatch".into())
        .spawn(move || run(ino, stop_rd, watched, on_plant))?;
    Ok(Some(GitWatch {
        stop: Some(stop_wr),
        thread: Some(thread),
    }))
}

fn run(
    ino: OwnedFd,
    stop: OwnedFd,
    watched: HashMap<i32, (OwnedFd, PathBuf)>,
    on_plant: impl Fn(&Path),
) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: ino.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two descriptors this thread owns, with their count.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return; // the watch was dropped
        }
        let mut reader = inotify::Reader::new(ino.as_fd(), &mut buf);
        loop {
            let ev = match reader.next() {
                Ok(ev) => ev,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break, // WOULDBLOCK: every event read
            };
            let Some(name) = ev.file_name() else { continue };
            if !PLANTED.contains(&name) {
                continue;
            }
            let Some((dir, path)) = watched.get(&ev.wd()) else {
                continue;
            };
            // Through the directory's descriptor: the path cannot be redirected.
            let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
            on_plant(&path.join(name.to_string_lossy().as_ref()));
        }
    }
}

/// The git directories of the repositories `crate::mounts` guards, as host paths with a
/// descriptor each: `.git` directories of repositories in the writable mounts (not
/// hidden, not themselves mounted by the policy) and of their submodules.
fn git_dirs(spec: &SandboxSpec) -> Vec<(OwnedFd, PathBuf)> {
    let Ok(root) = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let writable: Vec<_> = spec.writable_mounts().collect();
    let mut repos = Vec::new();
    for m in &writable {
        let mut seen = 0;
        let _ = mounts::find_repos(&root, "/proc", &m.source, 0, &mut seen, &mut repos);
    }
    let mut out = Vec::new();
    for repo in repos {
        let git = repo.join(".git");
        if writable.iter().any(|m| m.source == git) {
            continue; // the policy mounts it writable itself: not guarded
        }
        add_git_dir(&git, 0, &mut out);
    }
    out
}

/// `dir` if it is a directory (not a symlink), then its submodules' git directories.
fn add_git_dir(dir: &Path, depth: usize, out: &mut Vec<(OwnedFd, PathBuf)>) {
    let flags = rustix::fs::OFlags::PATH
        | rustix::fs::OFlags::DIRECTORY
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(dir, flags, rustix::fs::Mode::empty()) else {
        return;
    };
    out.push((fd, dir.to_path_buf()));
    if depth >= mounts::GIT_MODULES_MAX_DEPTH {
        return;
    }
    let modules = dir.join("modules");
    let Ok(rd) = std::fs::read_dir(&modules) else {
        return;
    };
    for ent in rd.flatten().take(mounts::GIT_MODULES_MAX_ENTRIES) {
        if ent.file_type().is_ok_and(|t| t.is_dir()) {
            add_git_dir(&modules.join(ent.file_name()), depth + 1, out);
        }
    }
}

/// How deep below the top of a writable mount [`git_written_during`] looks for
/// repositories, and how many directory entries it reads per mount at most.
const REPORT_DEPTH: usize = 8;
const REPORT_MAX_ENTRIES: usize = 20_000;

/// A git directory the session wrote configuration into that the session root did not
/// guard: a repository the agent created, or one deeper than the guard looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitWritten {
    /// The repository (host path): the directory holding `.git`.
    pub repo: PathBuf,
    /// What was written, relative to the repository: `.git` (a pointer file or a
    /// symlink), `.git/config`, `.git/hooks/pre-commit`, ...
    pub written: Vec<String>,
}

/// After a session: the repositories in `spec`'s writable mounts whose git
/// configuration, hooks or redirections (`config`, `config.worktree`, `commondir`,
/// `hooks/*`, or `.git` itself as a file or symlink) changed at or after `since`, which
/// the caller takes before the session starts. Change times are used, not
/// modification times: a process can set the latter to anything, the kernel sets the
/// former. `since` is moved 20 ms earlier: file times come from the kernel's coarse
/// clock, which may lag the clock `since` was read from by a tick. Guarded
/// repositories never show up (their configuration and hooks are read-only in the
/// session, and planted redirections are removed, see [`watch_git`]); what does is
/// what Warden could not guard. Looks up to [`REPORT_DEPTH`] levels deep,
/// not into the directories the pattern walk skips, reading at most
/// [`REPORT_MAX_ENTRIES`] entries per mount; symlinks are not followed.
pub fn git_written_during(spec: &SandboxSpec, since: std::time::SystemTime) -> Vec<GitWritten> {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
        - 20_000_000;
    let mut out = Vec::new();
    for m in spec.writable_mounts() {
        let mut budget = REPORT_MAX_ENTRIES;
        let mut dirs = vec![(m.source.clone(), 0usize)];
        while let Some((dir, depth)) = dirs.pop() {
            if budget == 0 {
                break;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for ent in rd.flatten().take(budget) {
                budget -= 1;
                let name = ent.file_name();
                let Ok(kind) = ent.file_type() else { continue };
                if name == ".git" {
                    if let Some(w) = written_in(&dir, kind.is_dir(), since) {
                        out.push(w);
                    }
                } else if kind.is_dir()
                    && depth < REPORT_DEPTH
                    && !crate::HIDE_WALK_SKIP_DIRS.iter().any(|s| *s == name)
                {
                    dirs.push((dir.join(&name), depth + 1));
                }
            }
        }
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    out.dedup_by(|a, b| a.repo == b.repo);
    out
}

/// What of `repo/.git` changed at or after `since` (nanoseconds since the epoch).
fn written_in(repo: &Path, is_dir: bool, since: i128) -> Option<GitWritten> {
    use std::os::unix::fs::MetadataExt;
    let changed = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()) >= since
        })
    };
    let git = repo.join(".git");
    let mut written = Vec::new();
    if !is_dir {
        // A `gitdir:` pointer or a symlink: git follows either to a directory it names.
        if changed(&git) {
            written.push(".git".to_string());
        }
    } else {
        for name in ["config", "config.worktree", "commondir"] {
            if changed(&git.join(name)) {
                written.push(format!(".git/{name}"));
            }
        }
        let hooks = git.join("hooks");
        if let Ok(rd) = std::fs::read_dir(&hooks) {
            for ent in rd.flatten().take(mounts::GIT_MODULES_MAX_ENTRIES) {
                let name = ent.file_name();
                // Git never runs a `*.sample` (what `git init` writes).
                if !name.as_encoded_bytes().ends_with(b".sample") && changed(&hooks.join(&name)) {
                    written.push(format!(".git/hooks/{}", name.to_string_lossy()));
                }
            }
        } else if changed(&hooks) {
            written.push(".git/hooks".to_string());
        }
    }
    (!written.is_empty()).then(|| GitWritten {
        repo: repo.to_path_buf(),
        written,
    })
}
