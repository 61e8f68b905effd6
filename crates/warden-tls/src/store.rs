//! The system store's certificates as PEM text, for a session's trust bundle.
//!
//! Where the host's store is ([`store_paths`]), for the session bundle and the upstream
//! roots alike: `SSL_CERT_FILE` and `SSL_CERT_DIR` when either is set (as
//! `rustls-native-certs`); else the distribution's bundle file that `openssl-probe`
//! finds, and its certificate directories only when there is no such file. The file
//! first, then every regular file of each directory (through symlinks), each file once.
//! Compared with `rustls-native-certs` parsing the same paths, what differs is only the
//! work: the `CERTIFICATE` blocks are copied as text (their base64 checked, not decoded;
//! a block whose text was seen already is not even checked) and deduplicated by their
//! base64 in canonical lines, and a symlink naming another entry of the same directory
//! (the hashed `5ad8a5d6.0 -> GlobalSign_Root_CA.pem` links of `update-ca-certificates`)
//! is not followed, because that entry is read itself. On Debian this halves the path
//! walks through the store's slow symlinks and skips decoding 290 certificates, which
//! the session bundle does not need: about half the CPU of the parse.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The system store as PEM text.
#[derive(Default)]
pub(crate) struct SystemPem {
    /// Each distinct certificate once, as `-----BEGIN CERTIFICATE-----` blocks of 64
    /// columns.
    pub text: String,
    /// The body of each certificate in `text`: its base64 in canonical lines (64
    /// columns, each line ending in `\n`), so that two blocks are the same certificate
    /// exactly when their bodies are equal. Kept as ranges of `text`: the store is read
    /// into as few fresh pages as can be (first touches of memory are a good part of the
    /// cost here).
    bodies: Vec<std::ops::Range<usize>>,
    /// `bodies` by [`digest`].
    index: HashMap<u64, Vec<usize>>,
    /// What could not be read, worded as `rustls-native-certs` words it.
    pub errors: Vec<String>,
}

/// A cheap hash of a body: its length and last 64 bytes (the signature's base64).
fn digest(body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ body.len() as u64;
    for b in &body[body.len().saturating_sub(64)..] {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl SystemPem {
    /// Reads the system store (see the module docs).
    pub fn load() -> SystemPem {
        let (file, dirs) = store_paths();
        SystemPem::load_from(file.as_deref(), &dirs)
    }

    /// Reads the store at `file` and `dirs`.
    fn load_from(file: Option<&Path>, dirs: &[PathBuf]) -> SystemPem {
        let mut out = SystemPem::default();
        let mut seen = HashSet::new();
        let mut buf = Vec::new();
        if let Some(file) = file {
            if let Ok(m) = fs::metadata(file) {
                seen.insert(id(&m));
                // The bundle holds (nearly) every certificate: room for it and a few more.
                let len = usize::try_from(m.len()).unwrap_or(0);
                out.text.reserve(len.saturating_add(16 << 10));
                buf.reserve(len.saturating_add(1));
            }
            out.read_file(file, &mut buf);
        }
        for dir in dirs {
            out.read_dir(dir, &mut seen, &mut buf);
        }
        out
    }

    /// The same for certificates given as DER (an explicitly given store).
    pub fn from_der<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> SystemPem {
        let mut out = SystemPem::default();
        for der in certs {
            out.push_body(&body_of(der));
        }
        out
    }

    /// Appends the certificate with base64 `body` unless it is there already; true when
    /// it was added.
    pub fn push_body(&mut self, body: &[u8]) -> bool {
        if self.contains(body) {
            return false;
        }
        self.text.push_str("-----BEGIN CERTIFICATE-----\n");
        let start = self.text.len();
        // A body is checked base64 and newlines: ASCII.
        self.text
            .push_str(std::str::from_utf8(body).unwrap_or_default());
        let range = start..self.text.len();
        self.text.push_str("-----END CERTIFICATE-----\n");
        self.index
            .entry(digest(body))
            .or_default()
            .push(self.bodies.len());
        self.bodies.push(range);
        true
    }

    /// The bodies of the certificates in `text`.
    #[cfg(test)]
    fn bodies(&self) -> impl Iterator<Item = &[u8]> {
        self.bodies.iter().map(|r| &self.text.as_bytes()[r.clone()])
    }

    /// Whether `text` holds the certificate with this body (canonical lines).
    pub fn contains(&self, body: &[u8]) -> bool {
        self.index.get(&digest(body)).is_some_and(|ids| {
            ids.iter()
                .any(|i| &self.text.as_bytes()[self.bodies[*i].clone()] == body)
        })
    }

    /// How many certificates `text` holds.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Reads `path` (into `buf`, reused from file to file).
    fn read_file(&mut self, path: &Path, buf: &mut Vec<u8>) {
        buf.clear();
        match fs::File::open(path).and_then(|mut f| io::Read::read_to_end(&mut f, buf)) {
            Ok(_) => {
                for raw in cert_blocks(buf) {
                    // The same text as a certificate already read: nothing to check.
                    if raw.as_ref().is_ok_and(|r| self.contains(r)) {
                        continue;
                    }
                    match raw.and_then(body_from) {
                        Ok(body) => {
                            self.push_body(&body);
                        }
                        Err(why) => self.errors.push(format!(
                            "failed to read PEM from file: {why} in '{}'",
                            path.display()
                        )),
                    }
                }
            }
            Err(e) => self.errors.push(format!(
                "failed to read PEM from file: {e} at '{}'",
                path.display()
            )),
        }
    }

    fn read_dir(&mut self, dir: &Path, seen: &mut HashSet<(u64, u64)>, buf: &mut Vec<u8>) {
        let reader = match fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                self.errors
                    .push(format!("opening directory: {e} at '{}'", dir.display()));
                return;
            }
        };
        let mut entries = Vec::new();
        for entry in reader {
            match entry {
                Ok(e) => entries.push(e),
                Err(e) => self.errors.push(format!(
                    "reading directory entries: {e} at '{}'",
                    dir.display()
                )),
            }
        }
        let names: HashSet<std::ffi::OsString> = entries.iter().map(|e| e.file_name()).collect();
        for entry in entries {
            let path = entry.path();
            // A link to another entry of this directory by its bare name reaches exactly
            // the file that entry reaches, and that entry is visited in this loop.
            if entry.file_type().is_ok_and(|t| t.is_symlink())
                && let Ok(target) = fs::read_link(&path)
                && is_sibling(&target)
                && names.contains(target.as_os_str())
            {
                continue;
            }
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.errors
                        .push(format!("failed to open file: {e} at '{}'", path.display()));
                    continue;
                }
            };
            if meta.is_file() && seen.insert(id(&meta)) {
                self.read_file(&path, buf);
            }
        }
    }
}

/// A symlink target that is a plain name in the link's own directory.
fn is_sibling(target: &Path) -> bool {
    let mut c = target.components();
    matches!(
        (c.next(), c.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}

fn id(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Where the host's store is: `SSL_CERT_FILE` / `SSL_CERT_DIR` (a `:`-separated list)
/// when either is set, else the bundle file `openssl-probe` finds, or its directories
/// when it finds no file; in both cases without a directory that holds the bundle file.
///
/// The distribution's directory is not read next to its bundle file: every certificate
/// the distribution's tools install is in the file (`update-ca-certificates`,
/// `update-ca-trust`, `trust extract`), and reading the directory means opening each of
/// its ≈ 150 files through slow symlinks on every session start (≈ 0.7 ms of ≈ 9 here,
/// docs/benchmarks.md, "Sixth round"), to find what the file already holds. A
/// directory that holds the bundle file (`SSL_CERT_DIR=/etc/ssl/certs` next to
/// `SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt`, as some images set them) is that
/// directory. What only the directory holds (on Debian `ssl-cert-snakeoil.pem`, not a
/// CA) is still trusted by OpenSSL-based programs in the session, which look the
/// directory up themselves (it is visible read-only); Node, Python `requests`, rustls
/// and Go read the file, on the host too. Any other directory named in `SSL_CERT_DIR`
/// is read.
pub(crate) fn store_paths() -> (Option<PathBuf>, Vec<PathBuf>) {
    choose_paths(
        std::env::var_os("SSL_CERT_FILE"),
        std::env::var_os("SSL_CERT_DIR"),
        || {
            let p = openssl_probe::probe();
            (p.cert_file, p.cert_dir)
        },
    )
}

/// [`store_paths`] for given variables and probe.
fn choose_paths(
    file: Option<std::ffi::OsString>,
    dirs: Option<std::ffi::OsString>,
    probe: impl FnOnce() -> (Option<PathBuf>, Vec<PathBuf>),
) -> (Option<PathBuf>, Vec<PathBuf>) {
    let file = file.map(PathBuf::from);
    let dirs: Vec<PathBuf> = match dirs {
        Some(d) => std::env::split_paths(&d)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => Vec::new(),
    };
    let (file, mut dirs) = if file.is_some() || !dirs.is_empty() {
        (file, dirs)
    } else {
        match probe() {
            (Some(file), _) => (Some(file), Vec::new()),
            (None, dirs) => (None, dirs),
        }
    };
    if let Some(file) = &file {
        dirs.retain(|d| !holds(d, file));
    }
    (file, dirs)
}

/// Whether directory `dir` holds `file` (which exists), as named or once links are
/// resolved. A bundle file that is missing leaves its directory to be read.
fn holds(dir: &Path, file: &Path) -> bool {
    match (fs::canonicalize(dir), fs::canonicalize(file)) {
        (Ok(d), Ok(f)) => file.parent() == Some(dir) || f.parent() == Some(d.as_path()),
        _ => false,
    }
}

const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const END: &[u8] = b"-----END CERTIFICATE-----";

/// The text of each `CERTIFICATE` block of `pem` (from the line after `BEGIN` to the
/// `END` line). Other blocks and text between blocks are skipped.
fn cert_blocks(pem: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> + '_ {
    let mut rest = pem;
    std::iter::from_fn(move || {
        let start = find(rest, BEGIN)? + BEGIN.len();
        let after = &rest[start..];
        let Some(len) = find(after, END) else {
            rest = &[];
            return Some(Err("no END CERTIFICATE line"));
        };
        let raw = &after[..len];
        rest = &after[len + END.len()..];
        Some(Ok(raw.strip_prefix(b"\n").unwrap_or(raw)))
    })
}

/// The body (canonical lines) of a block's text, or why it is not valid base64. Text
/// already in canonical lines (as every distribution writes it) is taken as it is;
/// any other is unwrapped, checked and wrapped again.
fn body_from(raw: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, &'static str> {
    if canonical(raw) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let flat: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if valid_base64(&flat) {
        Ok(std::borrow::Cow::Owned(wrap(&flat)))
    } else {
        Err("invalid base64 in a CERTIFICATE block")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Whether `b` is padded standard base64 of at least one byte in canonical lines.
fn canonical(b: &[u8]) -> bool {
    let Some((&b'\n', _)) = b.split_last() else {
        return false;
    };
    let mut chars = 0;
    let mut lines = b.chunks(65).peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let Some((&b'\n', text)) = line.split_last() else {
            return false;
        };
        if text.is_empty() || (!last && text.len() != 64) {
            return false;
        }
        chars += text.len();
        let pad = if last {
            text.iter().rev().take_while(|c| **c == b'=').count()
        } else {
            0
        };
        if pad > 2 || !text[..text.len() - pad].iter().all(|c| is_b64(*c)) {
            return false;
        }
    }
    chars.is_multiple_of(4)
}

/// The base64 alphabet (without `=`).
const B64: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
        c += 1;
    }
    t
};

fn is_b64(c: u8) -> bool {
    B64[c as usize]
}

/// Padded standard base64 of at least one byte, without whitespace.
fn valid_base64(b: &[u8]) -> bool {
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    pad <= 2 && b[..b.len() - pad].iter().all(|c| is_b64(*c))
}

/// Base64 without whitespace → a body in canonical lines.
fn wrap(flat: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 64 + 1);
    for line in flat.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Appends one PEM certificate block.
pub(crate) fn push_block(out: &mut String, body: &[u8]) {
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    // A body is checked base64 and newlines: ASCII.
    out.push_str(std::str::from_utf8(body).unwrap_or_default());
    out.push_str("-----END CERTIFICATE-----\n");
}

/// The body (canonical lines) of a DER certificate.
pub(crate) fn body_of(der: &[u8]) -> Vec<u8> {
    use base64::Engine;
    wrap(
        base64::engine::general_purpose::STANDARD
            .encode(der)
            .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_found_checked_and_other_text_skipped() {
        let pem =
            b"# comment\n-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n\
            -----BEGIN TRUSTED CERTIFICATE-----\nQUJD\n-----END TRUSTED CERTIFICATE-----\n\
            -----BEGIN CERTIFICATE-----\r\nQU*D\r\n-----END CERTIFICATE-----\r\n\
            -----BEGIN CERTIFICATE-----\nQUI=\n";
        let got: Vec<_> = cert_blocks(pem)
            .map(|b| b.and_then(body_from).map(|c| c.into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok(b"QUJDREVG\n".to_vec()),
                Err("invalid base64 in a CERTIFICATE block"),
                Err("no END CERTIFICATE line"),
            ]
        );
    }

    #[test]
    fn canonical_lines_are_recognised_and_others_rewrapped() {
        let long = "QUJD".repeat(20); // 80 characters
        let canon = format!("{}\n{}\n", &long[..64], &long[64..]);
        assert!(canonical(canon.as_bytes()));
        for other in [
            format!("{long}\n"),                               // one long line
            format!("{}\r\n{}\r\n", &long[..64], &long[64..]), // CRLF
            format!("{}\n{}", &long[..64], &long[64..]),       // no final newline
            format!("{}=\n{}\n", &long[..63], &long[64..]),    // padding mid-way
        ] {
            assert!(!canonical(other.as_bytes()), "{other:?}");
        }
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\r\n{}\r\n{}\r\n-----END CERTIFICATE-----\r\n",
            &long[..64],
            &long[64..]
        );
        let got: Vec<_> = cert_blocks(pem.as_bytes())
            .map(|b| b.and_then(body_from).map(|c| c.into_owned()))
            .collect();
        assert_eq!(got, vec![Ok(canon.into_bytes())]);
    }

    #[test]
    fn base64_check_takes_padding_only_at_the_end() {
        assert!(valid_base64(b"QUI="));
        assert!(valid_base64(b"QQ=="));
        assert!(!valid_base64(b"Q==="));
        assert!(!valid_base64(b"QU=I"));
        assert!(!valid_base64(b"QUJ"));
        assert!(!valid_base64(b""));
    }

    #[test]
    fn sibling_links_are_bare_names_only() {
        assert!(is_sibling(Path::new("GlobalSign.pem")));
        assert!(!is_sibling(Path::new("/usr/share/ca-certificates/x.crt")));
        assert!(!is_sibling(Path::new("../x.pem")));
        assert!(!is_sibling(Path::new("sub/x.pem")));
        assert!(!is_sibling(Path::new("..")));
    }

    /// Every kind of entry a store directory can hold: the text read finds exactly the
    /// certificates `rustls-native-certs` parses from the same file and directory.
    #[test]
    fn text_read_finds_what_rustls_native_certs_finds() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir()?;
        let shared = tmp.path().join("share");
        let dir = tmp.path().join("certs");
        fs::create_dir_all(&shared)?;
        fs::create_dir_all(dir.join("java"))?;
        let pems: Vec<String> = (0..5)
            .map(|_| crate::SessionCa::new().map(|c| c.cert_pem().to_string()))
            .collect::<Result<_, _>>()?;
        // The bundle holds 0 and 1 and sits in the directory too (read once).
        let bundle = dir.join("ca-certificates.crt");
        fs::write(&bundle, format!("{}{}", pems[0], pems[1]))?;
        // Named links to files elsewhere, hashed links to the named ones.
        for (i, pem) in pems.iter().enumerate().take(3) {
            let target = shared.join(format!("ca{i}.crt"));
            fs::write(&target, pem)?;
            symlink(&target, dir.join(format!("ca{i}.pem")))?;
            symlink(format!("ca{i}.pem"), dir.join(format!("0000000{i}.0")))?;
        }
        // Only in the directory: a plain file with two certificates, a relative link
        // out of the directory, a link to a missing sibling, a loop, a link to a
        // directory, a file with no certificate.
        fs::write(dir.join("local.pem"), format!("{}{}", pems[3], pems[0]))?;
        fs::write(shared.join("four.crt"), &pems[4])?;
        symlink("../share/four.crt", dir.join("four.pem"))?;
        symlink("missing.pem", dir.join("11111111.0"))?;
        symlink("loop-b.pem", dir.join("loop-a.pem"))?;
        symlink("loop-a.pem", dir.join("loop-b.pem"))?;
        symlink("java", dir.join("22222222.0"))?;
        fs::write(dir.join("README"), "not a certificate\n")?;

        let text = SystemPem::load_from(Some(&bundle), std::slice::from_ref(&dir));
        let parsed = rustls_native_certs::load_certs_from_paths(Some(&bundle), Some(&dir));
        let want: HashSet<Vec<u8>> = parsed.certs.iter().map(|c| body_of(c.as_ref())).collect();
        assert_eq!(
            want.len(),
            5,
            "the fixture holds five distinct certificates"
        );
        let got: HashSet<Vec<u8>> = text.bodies().map(<[u8]>::to_vec).collect();
        assert_eq!(got, want);
        assert_eq!(text.text.matches("BEGIN CERTIFICATE").count(), 5);
        Ok(())
    }

    #[test]
    fn the_store_is_the_bundle_file_and_its_directories_only_without_one() {
        let probe = || {
            (
                Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
                vec![PathBuf::from("/usr/lib/ssl/certs")],
            )
        };
        let no_probe = || -> (Option<PathBuf>, Vec<PathBuf>) { panic!("probed") };
        // Nothing set: the distribution's file, not its directory.
        assert_eq!(
            choose_paths(None, None, probe),
            (
                Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
                vec![]
            )
        );
        // No file found: its directories.
        assert_eq!(
            choose_paths(None, None, || (None, vec![PathBuf::from("/d")])),
            (None, vec![PathBuf::from("/d")])
        );
        // Either variable set: exactly what they name, nothing probed.
        assert_eq!(
            choose_paths(Some("/f.pem".into()), None, no_probe),
            (Some(PathBuf::from("/f.pem")), vec![])
        );
        assert_eq!(
            choose_paths(None, Some("/a::/b".into()), no_probe),
            (None, vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
        assert_eq!(
            choose_paths(Some("/f.pem".into()), Some("/a".into()), no_probe),
            (Some(PathBuf::from("/f.pem")), vec![PathBuf::from("/a")])
        );
    }

    /// A directory that holds the bundle file is the store the file was made from: not
    /// read. A bundle file that is missing leaves its directory to be read.
    #[test]
    fn a_directory_holding_the_bundle_file_is_not_read() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let certs = tmp.path().join("certs");
        let other = tmp.path().join("other");
        fs::create_dir(&certs)?;
        fs::create_dir(&other)?;
        let file = certs.join("bundle.crt");
        fs::write(&file, "")?;
        let both = std::env::join_paths([&certs, &other])?;
        let no_probe = || -> (Option<PathBuf>, Vec<PathBuf>) { panic!("probed") };
        assert_eq!(
            choose_paths(Some(file.clone().into()), Some(both.clone()), no_probe),
            (Some(file.clone()), vec![other.clone()])
        );
        let missing = certs.join("missing.crt");
        assert_eq!(
            choose_paths(Some(missing.clone().into()), Some(both), no_probe),
            (Some(missing), vec![certs, other])
        );
        Ok(())
    }

    /// A directory holds the bundle also through links (`/usr/lib/ssl/certs` is a link
    /// to `/etc/ssl/certs` on Debian).
    #[test]
    fn a_linked_directory_holds_the_file_of_its_target() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let certs = tmp.path().join("certs");
        fs::create_dir(&certs)?;
        fs::write(certs.join("bundle.crt"), "")?;
        std::os::unix::fs::symlink(&certs, tmp.path().join("link"))?;
        fs::create_dir(tmp.path().join("other"))?;
        let file = certs.join("bundle.crt");
        assert!(holds(&certs, &file));
        assert!(holds(&tmp.path().join("link"), &file));
        assert!(!holds(&tmp.path().join("other"), &file));
        assert!(!holds(tmp.path(), &file));
        Ok(())
    }

    #[test]
    fn a_missing_store_is_reported_as_rustls_native_certs_reports_it() {
        let text = SystemPem::load_from(
            Some(Path::new("/nonexistent/warden-test/ca.crt")),
            &[PathBuf::from("/nonexistent/warden-test/certs")],
        );
        assert_eq!(text.len(), 0);
        assert_eq!(text.errors.len(), 2, "{:?}", text.errors);
        assert!(text.errors[0].starts_with("failed to read PEM from file: "));
        assert!(text.errors[1].starts_with("opening directory: "));
    }

    #[test]
    fn from_der_dedups_and_wraps_at_64_columns() {
        let a = vec![7u8; 100];
        let b = vec![9u8; 10];
        let s = SystemPem::from_der([a.as_slice(), b.as_slice(), a.as_slice()]);
        assert_eq!(s.len(), 2);
        assert!(s.text.lines().all(|l| l.len() <= 64));
        assert_eq!(s.text.matches("BEGIN CERTIFICATE").count(), 2);
    }
}
