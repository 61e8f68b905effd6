//! Filesystem visibility: the workspace, mounts and `filesystem.deny`.
//!
//! Everything here is lexical: paths are normalized (`.`/`..`, repeated `/`) without
//! touching the filesystem, so a decision never depends on (or races with) what is on
//! disk. Symlinks are the sandbox's job: it mounts real paths and hides denied ones.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::doc::{Filesystem, expand_home};

/// Validate one `filesystem.deny` pattern. Returns (message, hint) on error.
pub(crate) fn check_deny_pattern(p: &str) -> Result<(), (String, Option<String>)> {
    let forms = "deny patterns are absolute (`/etc/shadow`), under home (`~/.ssh`), or \
                 anywhere (`**/.env`, `**/*.pem`)";
    if p.contains('\0') {
        return Err((format!("`{p}` contains NUL"), None));
    }
    if !(p.starts_with('/') || p == "~" || p.starts_with("~/") || p.starts_with("**/")) {
        let hint = if p.starts_with('~') {
            forms.to_owned()
        } else {
            format!("did you mean `**/{p}`? {forms}")
        };
        return Err((format!("deny pattern `{p}` is relative"), Some(hint)));
    }
    if p.split('/').any(|c| c == "..") {
        return Err((format!("deny pattern `{p}` must not contain `..`"), None));
    }
    glob(p.trim_start_matches("~/")).map_err(|e| {
        (
            format!("invalid glob `{p}`: {e}"),
            Some("`*` matches within one path component, `**` across components".into()),
        )
    })?;
    Ok(())
}

fn glob(p: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(p).literal_separator(true).build()
}

/// The compiled `filesystem.deny` patterns, independent of any home directory.
#[derive(Debug, Default)]
pub(crate) struct DenySet {
    /// Absolute and `**/` patterns, matched against absolute paths.
    abs: GlobSet,
    abs_idx: Vec<usize>,
    /// `~/...` patterns without the `~/`, matched against paths relative to home.
    home_rel: GlobSet,
    home_idx: Vec<usize>,
    /// Index of a bare `~` pattern.
    home_itself: Option<usize>,
}

impl DenySet {
    pub fn new(patterns: &[String]) -> Self {
        let mut abs = GlobSetBuilder::new();
        let mut home = GlobSetBuilder::new();
        let mut set = DenySet::default();
        for (i, p) in patterns.iter().enumerate() {
            if p == "~" {
                set.home_itself.get_or_insert(i);
            } else if let Some(rel) = p.strip_prefix("~/") {
                // `~/**/x` must also match `~/x`: globset's `**/` already does.
                if let Ok(g) = glob(rel.trim_end_matches('/')) {
                    home.add(g);
                    set.home_idx.push(i);
                }
            } else if let Ok(g) = glob(p.trim_end_matches('/')) {
                abs.add(g);
                set.abs_idx.push(i);
            }
        }
        set.abs = abs.build().unwrap_or_default();
        set.home_rel = home.build().unwrap_or_default();
        set
    }

    /// Index of the first pattern naming exactly `p` (not an ancestor of it).
    fn matches_exact(&self, p: &Path, home: &Path) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut take = |i: usize| best = Some(best.map_or(i, |b| b.min(i)));
        if let Some(&i) = self.abs.matches(p).first() {
            take(self.abs_idx.get(i).copied().unwrap_or(i));
        }
        if let Ok(rel) = p.strip_prefix(home) {
            if rel.as_os_str().is_empty() {
                if let Some(i) = self.home_itself {
                    take(i);
                }
            } else if let Some(&i) = self.home_rel.matches(rel).first() {
                take(self.home_idx.get(i).copied().unwrap_or(i));
            }
        }
        best
    }

    /// Index of the pattern hiding `p`: one that names `p` or an ancestor of it, but
    /// no ancestor strictly above `root` (the workspace or mount exposing `p`), so a
    /// pattern like `~` hides home without hiding a workspace that lives under it.
    pub fn hiding(&self, p: &Path, home: &Path, root: Option<&Path>) -> Option<usize> {
        for a in p.ancestors() {
            if let Some(r) = root
                && r != a
                && r.starts_with(a)
            {
                return None;
            }
            if let Some(i) = self.matches_exact(a, home) {
                return Some(i);
            }
        }
        None
    }
}

/// `filesystem.deny` bound to one home directory, for the sandbox.
#[derive(Debug, Clone)]
pub struct DenyMatcher {
    pub(crate) set: Arc<DenySet>,
    pub(crate) home: PathBuf,
}

impl DenyMatcher {
    /// Is `path` (absolute) hidden: does a pattern name it or one of its ancestors?
    pub fn is_denied(&self, path: &Path) -> bool {
        self.set
            .hiding(&normalize(path), &self.home, None)
            .is_some()
    }

    /// Like [`DenyMatcher::is_denied`], for a path exposed through `root` (a workspace
    /// or mount host path): patterns naming an ancestor strictly above `root` do not
    /// count (`~` does not hide a workspace under home; `**/.env` inside it still hides).
    pub fn is_denied_below(&self, path: &Path, root: &Path) -> bool {
        self.set
            .hiding(&normalize(path), &self.home, Some(&normalize(root)))
            .is_some()
    }
}

/// Lexical normalization: resolve `.` and `..` (never above `/`), drop repeated
/// separators. Relative paths stay relative.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !p.is_absolute() {
                    out.push("..");
                }
                if p.is_absolute() && out.as_os_str().is_empty() {
                    out.push("/");
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => {}
        }
    }
    out
}

/// Which grant exposes a path: the most specific (deepest) of the workspace and the
/// mounts whose host path contains it; a mount wins a tie with the workspace, since the
/// policy names it explicitly.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Grant {
    Workspace,
    Mount(usize),
}

pub(crate) fn covering_grant(
    fs: &Filesystem,
    p: &Path,
    workspace: Option<&Path>,
    home: &Path,
) -> Option<(Grant, PathBuf)> {
    let mut best: Option<(Grant, PathBuf)> = None;
    if let Some(ws) = workspace
        && p.starts_with(ws)
    {
        best = Some((Grant::Workspace, ws.to_path_buf()));
    }
    for (i, m) in fs.mounts.iter().enumerate() {
        let host = normalize(&expand_home(&m.host, home));
        if p.starts_with(&host) {
            let deeper = best
                .as_ref()
                .is_none_or(|(_, b)| host.components().count() >= b.components().count());
            if deeper {
                best = Some((Grant::Mount(i), host));
            }
        }
    }
    best
}

/// SPEC §4: the workspace is never `/`, `$HOME` or a parent of them, unless the policy
/// names that very directory in `filesystem.mounts`.
pub(crate) fn check_workspace(
    fs: &Filesystem,
    workspace: &Path,
    home: &Path,
) -> Result<(), String> {
    if !workspace.is_absolute() {
        return Err(format!(
            "the workspace `{}` is not an absolute path",
            workspace.display()
        ));
    }
    let ws = normalize(workspace);
    let home = normalize(home);
    let root = Path::new("/");
    let what = if ws == root {
        "the root directory"
    } else if ws == home {
        "your home directory"
    } else if home.starts_with(&ws) {
        "a parent of your home directory"
    } else {
        return Ok(());
    };
    let named = fs
        .mounts
        .iter()
        .any(|m| normalize(&expand_home(&m.host, &home)) == ws);
    if named {
        return Ok(());
    }
    Err(format!(
        "refusing to use {} (`{}`) as the workspace: it would expose everything under it; \
         pick a project directory, or name it explicitly in [[filesystem.mounts]]",
        what,
        ws.display()
    ))
}

/// [`normalize`] for a path that may start with `~`, keeping the `~`.
pub(crate) fn normalize_keep_tilde(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => {
            let n = normalize(&Path::new("/").join(rest));
            match n.strip_prefix("/") {
                Ok(r) if !r.as_os_str().is_empty() => Path::new("~").join(r),
                _ => PathBuf::from("~"),
            }
        }
        Err(_) => normalize(p),
    }
}

/// `p` with `home` written as `~` (`~` alone for home itself); other paths unchanged.
pub(crate) fn tilde_form(p: &Path, home: &Path) -> String {
    match p.strip_prefix(home) {
        Ok(rest) if home != Path::new("/") => {
            if rest.as_os_str().is_empty() {
                "~".to_owned()
            } else {
                format!("~/{}", rest.to_string_lossy())
            }
        }
        _ => p.to_string_lossy().into_owned(),
    }
}
