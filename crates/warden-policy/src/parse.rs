//! TOML text → [`PolicyDoc`], collecting every problem with its position instead of
//! stopping at the first. Unknown keys are errors: a typo must never silently widen
//! or narrow a policy.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::doc::*;
use crate::error::{Diagnostic, SourceMap, key_hint};
use crate::host::{HostPattern, PATTERN_FORMS};

type Val<'i> = Spanned<DeValue<'i>>;

pub(crate) struct Cx<'a> {
    pub sm: SourceMap<'a>,
    pub diags: Vec<Diagnostic>,
    pub base_dir: PathBuf,
}

const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "mode",
    "network",
    "tls",
    "filesystem",
    "limits",
    "sandbox",
    "credentials",
    "mcp",
    "cedar",
];
const SANDBOX_KEYS: &[&str] = &["backend"];
const NETWORK_KEYS: &[&str] = &["allow", "deny", "http"];
const SERVER_NETWORK_KEYS: &[&str] = &["allow", "deny"];
const HTTP_KEYS: &[&str] = &["host", "methods", "paths"];
const TLS_KEYS: &[&str] = &["extra_roots", "intercept"];
const FS_KEYS: &[&str] = &["workspace", "deny", "mounts"];
const MOUNT_KEYS: &[&str] = &["host", "path", "mode"];
const LIMIT_KEYS: &[&str] = &["memory", "pids", "cpus"];
const CRED_KEYS: &[&str] = &[
    "name",
    "source",
    "hosts",
    "env",
    "header",
    "format",
    "inject_body",
    "optional",
];
const MCP_KEYS: &[&str] = &["servers"];
const SERVER_KEYS: &[&str] = &[
    "name",
    "command",
    "url",
    "credentials",
    "tools",
    "network",
    "filesystem",
    "limits",
];
const TOOLS_KEYS: &[&str] = &["allow", "deny"];
const CEDAR_KEYS: &[&str] = &["files"];

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a> Cx<'a> {
    pub fn new(origin: &str, src: &'a str, base_dir: &Path) -> Self {
        Self {
            sm: SourceMap::new(origin, src),
            diags: Vec::new(),
            base_dir: base_dir.to_path_buf(),
        }
    }

    pub fn err(&mut self, span: Range<usize>, msg: impl Into<String>, hint: Option<String>) {
        let d = self.sm.diag(span, msg, hint);
        self.diags.push(d);
    }

    fn line(&self, span: &Range<usize>) -> u32 {
        self.sm.line_of(span.start)
    }

    fn check_keys(&mut self, t: &DeTable<'_>, allowed: &[&str], table: &str) {
        for (k, _) in t.iter() {
            let key: &str = k.get_ref();
            if !allowed.contains(&key) {
                let hint = key_hint(key, allowed);
                let place = if table.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in {table}")
                };
                self.err(k.span(), format!("unknown key `{key}` {place}"), Some(hint));
            }
        }
    }

    fn type_err(&mut self, v: &Val<'_>, key: &str, expected: &str) {
        self.err(
            v.span(),
            format!("`{key}` must be {expected}, found {}", kind(v.get_ref())),
            None,
        );
    }

    fn str_of<'t>(&mut self, v: &'t Val<'_>, key: &str) -> Option<&'t str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.type_err(v, key, "a string");
                None
            }
        }
    }

    fn get_str<'t>(&mut self, t: &'t DeTable<'_>, key: &str) -> Option<(&'t str, Range<usize>)> {
        let v = t.get(key)?;
        self.str_of(v, key).map(|s| (s, v.span()))
    }

    fn get_bool(&mut self, t: &DeTable<'_>, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_err(v, key, "a boolean (`true` or `false`)");
                None
            }
        }
    }

    fn table_of<'t, 'i>(&mut self, v: &'t Val<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.type_err(v, key, "a table");
                None
            }
        }
    }

    fn get_table<'t, 'i>(&mut self, t: &'t DeTable<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        let v = t.get(key)?;
        self.table_of(v, key)
    }

    /// Array of strings with their spans; a wrong element type is reported and skipped.
    fn get_strings(&mut self, t: &DeTable<'_>, key: &str) -> Option<Vec<(String, Range<usize>)>> {
        let v = t.get(key)?;
        let DeValue::Array(arr) = v.get_ref() else {
            self.type_err(v, key, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for item in arr.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                _ => self.err(
                    item.span(),
                    format!(
                        "`{key}` must contain only strings, found {}",
                        kind(item.get_ref())
                    ),
                    None,
                ),
            }
        }
        Some(out)
    }

    /// The tables of an array of tables (`[[x]]`), with their spans.
    fn get_tables<'t, 'i>(
        &mut self,
        t: &'t DeTable<'i>,
        key: &str,
        header: &str,
    ) -> Vec<(&'t DeTable<'i>, Range<usize>)> {
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(arr) = v.get_ref() else {
            self.err(
                v.span(),
                format!(
                    "`{key}` must be an array of tables, found {}",
                    kind(v.get_ref())
                ),
                Some(format!("write each entry as a `{header}` table")),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in arr.iter() {
            match item.get_ref() {
                DeValue::Table(tt) => out.push((tt, item.span())),
                _ => self.type_err(item, key, "a table"),
            }
        }
        out
    }

    fn int_of(&mut self, v: &Val<'_>, key: &str) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(v.span(), format!("`{key}` is out of range"), None);
                    None
                }
            },
            _ => {
                self.type_err(v, key, "an integer");
                None
            }
        }
    }
}

pub(crate) fn parse_doc(cx: &mut Cx<'_>, src: &str, default_name: &str) -> Option<PolicyDoc> {
    let root = match DeTable::parse(src) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_owned();
            cx.err(span, format!("invalid TOML: {msg}"), None);
            return None;
        }
    };
    let root = root.get_ref();
    cx.check_keys(root, TOP_KEYS, "");
    let mut doc = PolicyDoc {
        name: default_name.to_owned(),
        ..PolicyDoc::default()
    };

    match root.get("version") {
        None => cx.err(
            0..0,
            "missing required key `version`",
            Some("add `version = 1` at the top of the file".into()),
        ),
        Some(v) => {
            if let Some(n) = cx.int_of(v, "version") {
                if n == 1 {
                    doc.version = 1;
                } else {
                    cx.err(
                        v.span(),
                        format!("unsupported policy format version {n}"),
                        Some("this Warden understands `version = 1`".into()),
                    );
                }
            }
        }
    }
    if let Some((name, span)) = cx.get_str(root, "name") {
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_control() || c == '@' || c.is_whitespace())
        {
            cx.err(
                span,
                "`name` must be non-empty, without spaces, control characters or `@`",
                None,
            );
        } else {
            doc.name = name.to_owned();
        }
    }
    if let Some((mode, span)) = cx.get_str(root, "mode") {
        match mode {
            "enforce" => doc.mode = Mode::Enforce,
            "audit" => doc.mode = Mode::Audit,
            other => cx.err(
                span,
                format!("unknown mode `{other}`"),
                Some("`mode` is \"enforce\" or \"audit\"".into()),
            ),
        }
    }
    if let Some(t) = cx.get_table(root, "network") {
        doc.network = parse_network(cx, t, "[network]", true);
    }
    if let Some(t) = cx.get_table(root, "tls") {
        doc.tls = parse_tls(cx, t);
    }
    if let Some(t) = cx.get_table(root, "filesystem") {
        doc.filesystem = parse_fs(cx, t, "[filesystem]", WorkspaceMode::Rw);
    }
    if let Some(t) = cx.get_table(root, "limits") {
        doc.limits = parse_limits(cx, t, "[limits]");
    }
    if let Some(t) = cx.get_table(root, "sandbox") {
        doc.sandbox = parse_sandbox(cx, t);
    }
    for (t, span) in cx.get_tables(root, "credentials", "[[credentials]]") {
        if let Some(c) = parse_credential(cx, t, span) {
            if let Some(prev) = doc.credentials.iter().find(|p| p.name == c.name) {
                let line = prev.line;
                let span = t.get("name").map(|v| v.span()).unwrap_or(0..0);
                cx.err(
                    span,
                    format!("credential `{}` is defined twice", c.name),
                    Some(format!("the first definition is on line {line}")),
                );
            } else {
                doc.credentials.push(c);
            }
        }
    }
    if let Some(t) = cx.get_table(root, "mcp") {
        cx.check_keys(t, MCP_KEYS, "[mcp]");
        for (st, span) in cx.get_tables(t, "servers", "[[mcp.servers]]") {
            if let Some(s) = parse_server(cx, st, span, &doc.credentials) {
                if doc.mcp.servers.iter().any(|p| p.name == s.name) {
                    let span = st.get("name").map(|v| v.span()).unwrap_or(0..0);
                    cx.err(
                        span,
                        format!("MCP server `{}` is defined twice", s.name),
                        None,
                    );
                } else {
                    doc.mcp.servers.push(s);
                }
            }
        }
    }
    if let Some(t) = cx.get_table(root, "cedar") {
        cx.check_keys(t, CEDAR_KEYS, "[cedar]");
        if let Some(files) = cx.get_strings(t, "files") {
            for (f, span) in files {
                match crate::cedar::expand_glob(&cx.base_dir, &f) {
                    Ok(found) if found.is_empty() => cx.err(
                        span,
                        format!("`{f}` matches no file"),
                        Some("cedar file globs are relative to the policy file's directory".into()),
                    ),
                    Ok(found) => {
                        for p in found {
                            if !doc.cedar.resolved.contains(&p) {
                                doc.cedar.resolved.push(p);
                            }
                        }
                        let (root, _) = crate::cedar::glob_root(&cx.base_dir, &f);
                        if !doc.cedar.roots.contains(&root) {
                            doc.cedar.roots.push(root);
                        }
                    }
                    Err(e) => cx.err(span, format!("bad cedar file pattern `{f}`: {e}"), None),
                }
                doc.cedar.files.push(f);
            }
            doc.cedar.resolved.sort();
        }
    }
    Some(doc)
}

fn host_list(cx: &mut Cx<'_>, t: &DeTable<'_>, key: &str) -> Vec<HostEntry> {
    let mut out = Vec::new();
    for (s, span) in cx.get_strings(t, key).unwrap_or_default() {
        match HostPattern::parse(&s) {
            Ok(pattern) => out.push(HostEntry {
                pattern,
                written: s,
                line: cx.line(&span),
            }),
            Err(e) => cx.err(
                span,
                format!("invalid host pattern: {e}"),
                Some(PATTERN_FORMS.into()),
            ),
        }
    }
    out
}

fn parse_network(cx: &mut Cx<'_>, t: &DeTable<'_>, table: &str, top: bool) -> Network {
    cx.check_keys(
        t,
        if top {
            NETWORK_KEYS
        } else {
            SERVER_NETWORK_KEYS
        },
        table,
    );
    let mut net = Network {
        allow: host_list(cx, t, "allow"),
        deny: host_list(cx, t, "deny"),
        http: Vec::new(),
    };
    if !top {
        return net;
    }
    for (rt, span) in cx.get_tables(t, "http", "[[network.http]]") {
        cx.check_keys(rt, HTTP_KEYS, "[[network.http]]");
        let Some((host, hspan)) = cx.get_str(rt, "host") else {
            if !rt.contains_key("host") {
                cx.err(span, "[[network.http]] needs a `host`", None);
            }
            continue;
        };
        let pattern = match HostPattern::parse(host) {
            Ok(p) => p,
            Err(e) => {
                cx.err(
                    hspan,
                    format!("invalid host pattern: {e}"),
                    Some(PATTERN_FORMS.into()),
                );
                continue;
            }
        };
        let mut methods = Vec::new();
        for (m, mspan) in cx.get_strings(rt, "methods").unwrap_or_default() {
            if m.is_empty() || !m.bytes().all(is_tchar) {
                cx.err(mspan, format!("`{m}` is not an HTTP method"), None);
            } else {
                methods.push(m.to_ascii_uppercase());
            }
        }
        let mut paths = Vec::new();
        for (p, pspan) in cx.get_strings(rt, "paths").unwrap_or_default() {
            if !p.starts_with('/') {
                cx.err(
                    pspan,
                    format!("path glob `{p}` must start with `/`"),
                    Some("`*` matches one path segment, `**` any depth: \"/repos/acme/**\"".into()),
                );
            } else if p.contains(['?', '#']) {
                cx.err(
                    pspan,
                    format!("path glob `{p}` must not contain a query or fragment"),
                    None,
                );
            } else {
                paths.push(p);
            }
        }
        net.http.push(HttpRule {
            host: pattern,
            host_written: host.to_owned(),
            methods,
            paths,
            line: cx.line(&hspan),
        });
    }
    net
}

/// RFC 9110 token characters (header names, methods).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_tls(cx: &mut Cx<'_>, t: &DeTable<'_>) -> Tls {
    cx.check_keys(t, TLS_KEYS, "[tls]");
    let mut tls = Tls::default();
    for (r, span) in cx.get_strings(t, "extra_roots").unwrap_or_default() {
        let p = cx.base_dir.join(&r);
        if !p.is_file() {
            cx.err(
                span,
                format!("TLS root `{r}` not found"),
                Some("paths are relative to the policy file's directory".into()),
            );
        } else {
            tls.extra_roots.push(p);
        }
    }
    if let Some((i, span)) = cx.get_str(t, "intercept") {
        match i {
            "needed" => tls.intercept = Intercept::Needed,
            "all" => tls.intercept = Intercept::All,
            other => cx.err(
                span,
                format!("unknown intercept mode `{other}`"),
                Some("`intercept` is \"needed\" or \"all\"".into()),
            ),
        }
    }
    tls
}

fn parse_fs(
    cx: &mut Cx<'_>,
    t: &DeTable<'_>,
    table: &str,
    default_ws: WorkspaceMode,
) -> Filesystem {
    cx.check_keys(t, FS_KEYS, table);
    let mut fs = Filesystem {
        workspace: default_ws,
        ..Filesystem::default()
    };
    if let Some((w, span)) = cx.get_str(t, "workspace") {
        fs.workspace_line = cx.line(&span);
        match w {
            "rw" => fs.workspace = WorkspaceMode::Rw,
            "ro" => fs.workspace = WorkspaceMode::Ro,
            "none" => fs.workspace = WorkspaceMode::None,
            other => cx.err(
                span,
                format!("unknown workspace mode `{other}`"),
                Some("`workspace` is \"rw\", \"ro\" or \"none\"".into()),
            ),
        }
    }
    for (d, span) in cx.get_strings(t, "deny").unwrap_or_default() {
        match crate::fs::check_deny_pattern(&d) {
            Ok(()) => {
                fs.deny.push(d);
                fs.deny_lines.push(cx.line(&span));
            }
            Err((msg, hint)) => cx.err(span, msg, hint),
        }
    }
    let header = format!("[[{}.mounts]]", table.trim_matches(['[', ']']));
    for (mt, span) in cx.get_tables(t, "mounts", &header) {
        cx.check_keys(mt, MOUNT_KEYS, &header);
        let host = match cx.get_str(mt, "host") {
            Some((h, hspan)) => match check_mount_path(h, true) {
                Ok(()) => Some((PathBuf::from(h), hspan)),
                Err(m) => {
                    cx.err(
                        hspan,
                        m,
                        Some("write an absolute path or one starting with `~/`".into()),
                    );
                    None
                }
            },
            None => {
                if !mt.contains_key("host") {
                    cx.err(span.clone(), format!("{header} needs a `host` path"), None);
                }
                None
            }
        };
        let path = match cx.get_str(mt, "path") {
            Some((p, pspan)) => match check_mount_path(p, false) {
                Ok(()) => Some(PathBuf::from(p)),
                Err(m) => {
                    cx.err(
                        pspan,
                        m,
                        Some("the in-session path must be absolute".into()),
                    );
                    None
                }
            },
            None => None,
        };
        let mode = match cx.get_str(mt, "mode") {
            None => MountMode::Ro,
            Some(("ro", _)) => MountMode::Ro,
            Some(("rw", _)) => MountMode::Rw,
            Some((other, mspan)) => {
                cx.err(
                    mspan,
                    format!("unknown mount mode `{other}`"),
                    Some("`mode` is \"ro\" or \"rw\"".into()),
                );
                MountMode::Ro
            }
        };
        if let Some((host, hspan)) = host {
            let line = cx.line(&hspan);
            if fs.mounts.iter().any(|m| m.host == host) {
                cx.err(
                    hspan,
                    format!("`{}` is mounted twice", host.display()),
                    None,
                );
            } else {
                fs.mounts.push(Mount {
                    host,
                    path,
                    mode,
                    line,
                });
            }
        }
    }
    fs
}

fn check_mount_path(p: &str, allow_tilde: bool) -> Result<(), String> {
    if p.contains('\0') {
        return Err("a path must not contain NUL".into());
    }
    let ok = p.starts_with('/') || (allow_tilde && (p == "~" || p.starts_with("~/")));
    if !ok {
        return Err(format!("`{p}` is not an absolute path"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("`{p}` must not contain `..`"));
    }
    Ok(())
}

fn parse_sandbox(cx: &mut Cx<'_>, t: &DeTable<'_>) -> Sandbox {
    cx.check_keys(t, SANDBOX_KEYS, "[sandbox]");
    let mut s = Sandbox::default();
    if let Some((b, span)) = cx.get_str(t, "backend") {
        let line = cx.line(&span);
        match b {
            "namespaces" => s.backend = SandboxBackend::Namespaces,
            "gvisor" => s.backend = SandboxBackend::Gvisor,
            other => cx.err(
                span,
                format!("unknown sandbox backend `{other}`"),
                Some(
                    "`backend` is \"namespaces\" (the default: any backend) or \"gvisor\" \
                     (sessions must run under gVisor's application kernel)"
                        .into(),
                ),
            ),
        }
        s.backend_line = line;
    }
    s
}

fn parse_limits(cx: &mut Cx<'_>, t: &DeTable<'_>, table: &str) -> Limits {
    cx.check_keys(t, LIMIT_KEYS, table);
    let mut l = Limits::default();
    if let Some(v) = t.get("memory") {
        match v.get_ref() {
            DeValue::Integer(_) => match cx.int_of(v, "memory") {
                Some(n) if n > 0 => l.memory = Some(n.unsigned_abs()),
                Some(_) => cx.err(v.span(), "`memory` must be positive", None),
                None => {}
            },
            DeValue::String(s) => match parse_size(s) {
                Some(n) if n > 0 => l.memory = Some(n),
                _ => cx.err(
                    v.span(),
                    format!("`{s}` is not a memory size"),
                    Some(
                        "write bytes or a number with a unit: \"512MiB\", \"4GiB\", \"1G\" \
                         (K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000)"
                            .into(),
                    ),
                ),
            },
            _ => cx.type_err(v, "memory", "a size such as \"4GiB\" or a number of bytes"),
        }
    }
    if let Some(v) = t.get("pids") {
        match cx.int_of(v, "pids") {
            Some(n) if n > 0 => l.pids = Some(n.unsigned_abs()),
            Some(n) => cx.err(
                v.span(),
                format!("`pids` must be a positive integer, found {n}"),
                None,
            ),
            None => {}
        }
    }
    if let Some(v) = t.get("cpus") {
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(_) => cx.int_of(v, "cpus").map(|i| i as f64),
            _ => {
                cx.type_err(v, "cpus", "a number");
                return l;
            }
        };
        match n {
            Some(c) if c.is_finite() && c > 0.0 => l.cpus = Some(c),
            _ => cx.err(
                v.span(),
                "`cpus` must be a positive number",
                Some("e.g. `cpus = 2.0`".into()),
            ),
        }
    }
    l
}

/// "512MiB", "4GiB", "1G", "100M", "1024" → bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f = num.parse::<f64>().ok()?;
    let bytes = f * mult as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_credential(cx: &mut Cx<'_>, t: &DeTable<'_>, span: Range<usize>) -> Option<Credential> {
    cx.check_keys(t, CRED_KEYS, "[[credentials]]");
    let name = match cx.get_str(t, "name") {
        Some((n, nspan)) if valid_name(n) => Some((n.to_owned(), nspan)),
        Some((n, nspan)) => {
            cx.err(
                nspan,
                format!("`{n}` is not a valid credential name"),
                Some("use letters, digits, `_`, `-` and `.` (at most 64)".into()),
            );
            None
        }
        None => {
            if !t.contains_key("name") {
                cx.err(span.clone(), "[[credentials]] needs a `name`", None);
            }
            None
        }
    };
    const SOURCE_HINT: &str =
        "`source` is \"env:VAR\", \"file:PATH\", \"command:CMD\" or \"vault:NAME\"";
    let source = match cx.get_str(t, "source") {
        None => {
            if !t.contains_key("source") {
                let sp = name
                    .as_ref()
                    .map(|(_, s)| s.clone())
                    .unwrap_or(span.clone());
                cx.err(
                    sp,
                    "[[credentials]] needs a `source`",
                    Some(SOURCE_HINT.into()),
                );
            }
            None
        }
        Some((s, sspan)) => {
            let parsed = match s.split_once(':') {
                Some(("env", v)) if valid_env_name(v) => Some(CredentialSource::Env(v.into())),
                Some(("file", p)) if !p.is_empty() => Some(CredentialSource::File(p.into())),
                Some(("command", c)) if !c.trim().is_empty() => {
                    Some(CredentialSource::Command(c.into()))
                }
                Some(("vault", v)) if valid_name(v) => Some(CredentialSource::Vault(v.into())),
                _ => None,
            };
            if parsed.is_none() {
                cx.err(
                    sspan,
                    format!("invalid credential source `{s}`"),
                    Some(SOURCE_HINT.into()),
                );
            }
            parsed
        }
    };
    let mut hosts = Vec::new();
    let mut host_lines = Vec::new();
    match cx.get_strings(t, "hosts") {
        None if !t.contains_key("hosts") => {
            let sp = name
                .as_ref()
                .map(|(_, s)| s.clone())
                .unwrap_or(span.clone());
            cx.err(
                sp,
                "[[credentials]] needs `hosts`: the only destinations the secret may reach",
                Some("e.g. `hosts = [\"api.anthropic.com\"]`".into()),
            );
        }
        None => {}
        Some(list) => {
            if list.is_empty()
                && let Some(v) = t.get("hosts")
            {
                cx.err(
                    v.span(),
                    "`hosts` is empty: the credential could reach no host",
                    None,
                );
            }
            for (h, hspan) in list {
                match HostPattern::parse(&h) {
                    Ok(p) => {
                        hosts.push(p);
                        host_lines.push(cx.line(&hspan));
                    }
                    Err(e) => cx.err(
                        hspan,
                        format!("invalid host pattern: {e}"),
                        Some(PATTERN_FORMS.into()),
                    ),
                }
            }
        }
    }
    let env = match cx.get_str(t, "env") {
        Some((e, _)) if valid_env_name(e) => Some(e.to_owned()),
        Some((e, espan)) => {
            cx.err(
                espan,
                format!("`{e}` is not a valid environment variable name"),
                Some("use letters, digits and `_`, not starting with a digit".into()),
            );
            None
        }
        None => None,
    };
    let header = match cx.get_str(t, "header") {
        Some((h, _)) if !h.is_empty() && h.bytes().all(is_tchar) => Some(h.to_owned()),
        Some((h, hspan)) => {
            cx.err(
                hspan,
                format!("`{h}` is not a valid HTTP header name"),
                Some("header names are tokens: letters, digits and !#$%&'*+-.^_`|~".into()),
            );
            None
        }
        None => None,
    };
    let format = match cx.get_str(t, "format") {
        Some((f, _)) if f.contains("{secret}") => Some(f.to_owned()),
        Some((f, fspan)) => {
            cx.err(
                fspan,
                format!("`format` must contain `{{secret}}`, found \"{f}\""),
                Some("e.g. \"Bearer {secret}\"".into()),
            );
            None
        }
        None => None,
    };
    let inject_body = cx.get_bool(t, "inject_body").unwrap_or(false);
    let optional = cx.get_bool(t, "optional").unwrap_or(false);
    if optional
        && let Some(s) = &source
        && !matches!(s, CredentialSource::Env(_))
        && let Some(v) = t.get("optional")
    {
        cx.err(
            v.span(),
            "`optional` applies to `env:` sources only",
            Some(
                "a missing file, a failing command or an absent vault entry is always an \
                 error; remove `optional`"
                    .into(),
            ),
        );
    }
    let (name, nspan) = name?;
    Some(Credential {
        name,
        source: source?,
        hosts,
        env,
        header,
        format,
        inject_body,
        optional,
        line: cx.line(&nspan),
        host_lines,
    })
}

fn valid_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.contains("__")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

fn parse_server(
    cx: &mut Cx<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
    creds: &[Credential],
) -> Option<McpServer> {
    cx.check_keys(t, SERVER_KEYS, "[[mcp.servers]]");
    let name = match cx.get_str(t, "name") {
        Some((n, nspan)) if valid_server_name(n) => Some((n.to_owned(), nspan)),
        Some((n, nspan)) => {
            cx.err(
                nspan,
                format!("`{n}` is not a valid MCP server name"),
                Some(
                    "use letters, digits, `-` and single `_` (tools are exposed as SERVER__TOOL)"
                        .into(),
                ),
            );
            None
        }
        None => {
            if !t.contains_key("name") {
                cx.err(span.clone(), "[[mcp.servers]] needs a `name`", None);
            }
            None
        }
    };
    let command = cx.get_strings(t, "command");
    let url = cx.get_str(t, "url");
    let transport = match (command, url) {
        (Some(c), None) if !c.is_empty() => {
            Some(Transport::Command(c.into_iter().map(|(s, _)| s).collect()))
        }
        (Some(_), None) => {
            if let Some(v) = t.get("command") {
                cx.err(
                    v.span(),
                    "`command` is empty",
                    Some("e.g. [\"npx\", \"-y\", \"@modelcontextprotocol/server-github\"]".into()),
                );
            }
            None
        }
        (None, Some((u, uspan))) => {
            if u.starts_with("https://") || u.starts_with("http://") {
                Some(Transport::Url(u.to_owned()))
            } else {
                cx.err(uspan, format!("`{u}` is not an http(s) URL"), None);
                None
            }
        }
        (Some(_), Some((_, uspan))) => {
            cx.err(
                uspan,
                "an MCP server has either `command` or `url`, not both",
                None,
            );
            None
        }
        (None, None) => {
            if !t.contains_key("command") && !t.contains_key("url") {
                let sp = name
                    .as_ref()
                    .map(|(_, s)| s.clone())
                    .unwrap_or(span.clone());
                cx.err(
                    sp,
                    "[[mcp.servers]] needs `command` or `url`",
                    Some("`command = [\"prog\", \"arg\"]` for stdio, `url = \"https://…/mcp\"` for HTTP".into()),
                );
            }
            None
        }
    };
    let mut credentials = Vec::new();
    for (c, cspan) in cx.get_strings(t, "credentials").unwrap_or_default() {
        if creds.iter().any(|k| k.name == c) {
            credentials.push(c);
        } else {
            let names: Vec<&str> = creds.iter().map(|k| k.name.as_str()).collect();
            let hint = match crate::error::nearest(&c, &names) {
                Some(n) => format!("did you mean `{n}`?"),
                None if names.is_empty() => {
                    "define it in a [[credentials]] table (none is defined)".into()
                }
                None => format!("defined credentials: {}", names.join(", ")),
            };
            cx.err(cspan, format!("unknown credential `{c}`"), Some(hint));
        }
    }
    let mut server = McpServer {
        name: String::new(),
        transport: Transport::Command(Vec::new()),
        credentials,
        tools_allow: None,
        tools_deny: Vec::new(),
        tools_allow_lines: Vec::new(),
        tools_deny_lines: Vec::new(),
        network: Network::default(),
        filesystem: Filesystem {
            workspace: WorkspaceMode::None,
            ..Filesystem::default()
        },
        limits: Limits::default(),
        line: 0,
    };
    if let Some(tt) = cx.get_table(t, "tools") {
        cx.check_keys(tt, TOOLS_KEYS, "[mcp.servers.tools]");
        if let Some(list) = cx.get_strings(tt, "allow") {
            server.tools_allow_lines = list.iter().map(|(_, s)| cx.line(s)).collect();
            server.tools_allow = Some(list.into_iter().map(|(s, _)| s).collect());
        }
        if let Some(list) = cx.get_strings(tt, "deny") {
            server.tools_deny_lines = list.iter().map(|(_, s)| cx.line(s)).collect();
            server.tools_deny = list.into_iter().map(|(s, _)| s).collect();
        }
    }
    if let Some(nt) = cx.get_table(t, "network") {
        server.network = parse_network(cx, nt, "[mcp.servers.network]", false);
    }
    if let Some(ft) = cx.get_table(t, "filesystem") {
        server.filesystem = parse_fs(cx, ft, "[mcp.servers.filesystem]", WorkspaceMode::None);
    }
    if let Some(lt) = cx.get_table(t, "limits") {
        server.limits = parse_limits(cx, lt, "[mcp.servers.limits]");
    }
    let (name, nspan) = name?;
    server.name = name;
    server.line = cx.line(&nspan);
    server.transport = transport?;
    Some(server)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("100MB"), Some(100_000_000));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
