//! Finding and rewriting credential values — real and placeholder, in every encoding
//! Warden recognises — in bytes passing through the proxy.
//!
//! A [`SecretSet`] is built once per session from each credential's name, real value,
//! placeholder and bound hosts. It precomputes every encoded form of both values
//! ([`Form`]): raw; base64 (standard and URL-safe alphabets, padded and unpadded, and
//! the fully determined characters at each of the three byte alignments, so a value
//! inside a longer base64 blob — `Basic base64(user:token)`, a JSON document encoded
//! whole — is found too); percent-encoding (RFC 3986, HTML form with `+`, and every
//! byte escaped; each with upper- and lower-case hex); hex (lower and upper case).
//! All of them go into one Aho–Corasick automaton (leftmost-longest), so a scan is one
//! pass whatever the number of credentials and forms.
//!
//! From the set the proxy derives what each direction needs:
//!
//! - [`SecretSet::guard_for`]: a [`Detector`] for the credentials *not* bound to the
//!   destination host — any of their values there is exfiltration (403).
//! - [`SecretSet::injector_for`]: a [`Rewrite`] turning the placeholders of the
//!   credentials bound to the host into their real values (same form).
//! - [`SecretSet::scrubber`]: a [`Rewrite`] turning every real value back into its
//!   placeholder (same form), for responses.
//!
//! Streams are handled with a bounded window: [`StreamScanner`] (detect only),
//! [`StreamGuard`] (detect, and release only bytes that cannot be part of a value) and
//! [`StreamRewriter`]. What they hold back is exactly the longest suffix of the data
//! seen so far that is a proper prefix of some needle — never more than the longest
//! needle minus one byte, and nothing at all when the data ends in a byte no needle
//! can continue from. A server-sent event ending in `\n\n` is therefore released
//! immediately (no needle starts with a newline).
//!
//! Limits, stated plainly: mixed encodings (half the characters percent-escaped, mixed
//! hex case, JSON `\u` escapes) are not in the byte-level automaton; for URLs, headers
//! and form bodies [`Detector::find_decoded`] also scans the percent-decoded text. The
//! base64 forms at alignments 1 and 2 cover the fully determined characters only; when
//! such a form is rewritten, the one partial character at each edge keeps at most 4
//! bits of the original value.

use crate::{Placeholder, Secret};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Real values shorter than this are refused: their encodings would match ordinary
/// data far too often (and such a value is guessable anyway).
pub const MIN_SECRET_LEN: usize = 8;

/// How a value was encoded where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// The bytes as they are.
    Raw,
    /// Base64, either alphabet, any alignment.
    Base64,
    /// Percent-encoded (also form encoding with `+`).
    Url,
    /// Hexadecimal, lower or upper case.
    Hex,
}

impl Form {
    /// A short lowercase name for audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Base64 => "base64",
            Self::Url => "url",
            Self::Hex => "hex",
        }
    }
}

/// Which of a credential's two values was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    /// The real secret.
    Real,
    /// The session's placeholder.
    Placeholder,
}

/// A value found in some bytes. Carries the credential's name, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The credential's name.
    pub credential: Arc<str>,
    /// How it was encoded.
    pub form: Form,
    /// Real value or placeholder.
    pub which: Which,
    /// Byte offset of the match (for streams: from the start of the stream; for
    /// [`Detector::find_decoded`] hits in the decoded view: in that view).
    pub start: usize,
    /// Byte offset just past the match.
    pub end: usize,
}

/// One credential as the session knows it.
pub struct Credential {
    /// Its name (`[[credentials]] name`).
    pub name: String,
    /// The real value.
    pub real: Secret,
    /// This session's placeholder.
    pub placeholder: Placeholder,
    /// The host patterns it is bound to, as written in the policy. Opaque here: the
    /// proxy matches them (with warden-policy) in the closures it passes.
    pub hosts: Vec<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("real", &self.real)
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Why a set or a rewrite could not be built, or a header could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A real value is shorter than [`MIN_SECRET_LEN`].
    #[error(
        "credential {credential:?}: the value is shorter than {MIN_SECRET_LEN} bytes, too short to recognise safely"
    )]
    TooShort {
        /// The credential.
        credential: String,
    },
    /// Two credentials share a name.
    #[error("credential {credential:?} is defined twice")]
    DuplicateName {
        /// The credential.
        credential: String,
    },
    /// The automaton could not be built.
    #[error("could not build the secret scanner: {0}")]
    Build(#[from] aho_corasick::BuildError),
    /// The value going into a header would contain CR, LF or NUL (header injection).
    #[error(
        "credential {credential:?}: the value contains CR, LF or NUL and cannot be put in a header"
    )]
    UnsafeHeaderValue {
        /// The credential.
        credential: String,
    },
    /// A `format` string without exactly one `{secret}`.
    #[error("credential {credential:?}: format {format:?} must contain {{secret}} exactly once")]
    BadFormat {
        /// The credential.
        credential: String,
        /// The format as written.
        format: String,
    },
}

/// Number of encodings per value; the same index in the real and placeholder lists
/// is the same encoding, which is how a rewrite keeps the form.
const N_FORMS: usize = 19;

/// Every encoding of `v`, in a fixed order (see [`N_FORMS`]).
fn encodings(v: &[u8]) -> Vec<(Form, Zeroizing<Vec<u8>>)> {
    let z = |s: String| Zeroizing::new(s.into_bytes());
    let mut out = Vec::with_capacity(N_FORMS);
    out.push((Form::Raw, Zeroizing::new(v.to_vec())));
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push((Form::Base64, z(engine.encode(v))));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for align in 0..3 {
            out.push((Form::Base64, base64_core(engine, v, align)));
        }
    }
    for upper in [true, false] {
        out.push((Form::Url, percent(v, upper, is_unreserved, false)));
    }
    for upper in [true, false] {
        out.push((
            Form::Url,
            percent(
                v,
                upper,
                |b| b.is_ascii_alphanumeric() || b"*-._".contains(&b),
                true,
            ),
        ));
    }
    for upper in [true, false] {
        out.push((Form::Url, percent(v, upper, |_| false, false)));
    }
    out.push((Form::Hex, hex(v, false)));
    out.push((Form::Hex, hex(v, true)));
    out
}

/// The base64 characters fully determined by `v` when it starts `align` bytes into a
/// 3-byte group: characters whose 6 bits all come from `v`.
fn base64_core(
    engine: &base64::engine::GeneralPurpose,
    v: &[u8],
    align: usize,
) -> Zeroizing<Vec<u8>> {
    let mut shifted = Zeroizing::new(vec![0u8; align]);
    shifted.extend_from_slice(v);
    let encoded = Zeroizing::new(engine.encode(&*shifted).into_bytes());
    let first = (8 * align).div_ceil(6);
    let last = (8 * align + 8 * v.len()) / 6;
    Zeroizing::new(
        encoded
            .get(first..last.min(encoded.len()))
            .unwrap_or_default()
            .to_vec(),
    )
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn percent(v: &[u8], upper: bool, keep: impl Fn(u8) -> bool, plus: bool) -> Zeroizing<Vec<u8>> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Zeroizing::new(Vec::with_capacity(v.len() * 3));
    for &b in v {
        if keep(b) {
            out.push(b);
        } else if plus && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

fn hex(v: &[u8], upper: bool) -> Zeroizing<Vec<u8>> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Zeroizing::new(Vec::with_capacity(v.len() * 2));
    for &b in v {
        out.extend_from_slice(&[digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]);
    }
    out
}

/// What a needle stands for.
#[derive(Clone, Copy)]
struct NeedleInfo {
    cred: usize,
    which: Which,
    form: Form,
}

/// An automaton over a list of needles, plus what the stream window needs.
struct Matcher {
    ac: AhoCorasick,
    info: Vec<NeedleInfo>,
    /// The needles themselves (for the hold-back computation), zeroized on drop.
    needles: Vec<Zeroizing<Vec<u8>>>,
    /// Needle indices by first byte.
    by_first: Vec<Vec<usize>>,
    max_len: usize,
}

impl Matcher {
    /// Build from (info, bytes) pairs, dropping exact duplicates (the first wins).
    fn build(
        items: Vec<(NeedleInfo, Zeroizing<Vec<u8>>)>,
    ) -> Result<(Self, Vec<usize>), ScanError> {
        let mut info = Vec::new();
        let mut needles: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut kept = Vec::new();
        for (i, (inf, bytes)) in items.into_iter().enumerate() {
            if bytes.is_empty() || needles.iter().any(|n| **n == *bytes) {
                continue;
            }
            info.push(inf);
            needles.push(bytes);
            kept.push(i);
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(needles.iter().map(|n| n.as_slice()))?;
        let mut by_first = vec![Vec::new(); 256];
        for (i, n) in needles.iter().enumerate() {
            if let Some(&b) = n.first() {
                by_first[usize::from(b)].push(i);
            }
        }
        let max_len = needles.iter().map(|n| n.len()).max().unwrap_or(0);
        Ok((
            Self {
                ac,
                info,
                needles,
                by_first,
                max_len,
            },
            kept,
        ))
    }

    /// The smallest `s >= from` such that `buf[s..]` is a proper prefix of a needle
    /// (so bytes from `s` on may still become part of a match), else `buf.len()`.
    fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        let cut = buf.len().saturating_sub(self.max_len.saturating_sub(1));
        for s in from.max(cut)..buf.len() {
            let tail = &buf[s..];
            let open = self.by_first[usize::from(buf[s])]
                .iter()
                .any(|&i| self.needles[i].len() > tail.len() && self.needles[i].starts_with(tail));
            if open {
                return s;
            }
        }
        buf.len()
    }
}

/// Finds credential values in bytes. Cheap to share (`Arc`).
pub struct Detector {
    m: Matcher,
    names: Vec<Arc<str>>,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("needles", &self.m.needles.len())
            .field("max_needle_len", &self.m.max_len)
            .finish_non_exhaustive()
    }
}

impl Detector {
    fn finding(&self, pattern: usize, start: usize, end: usize) -> Finding {
        let info = self.m.info[pattern];
        Finding {
            credential: self.names[info.cred].clone(),
            form: info.form,
            which: info.which,
            start,
            end,
        }
    }

    /// The leftmost (then longest) value in `haystack`.
    pub fn find(&self, haystack: &[u8]) -> Option<Finding> {
        let m = self.m.ac.find(haystack)?;
        Some(self.finding(m.pattern().as_usize(), m.start(), m.end()))
    }

    /// Every non-overlapping value in `haystack`, left to right.
    pub fn find_iter<'a>(&'a self, haystack: &'a [u8]) -> impl Iterator<Item = Finding> + 'a {
        self.m
            .ac
            .find_iter(haystack)
            .map(|m| self.finding(m.pattern().as_usize(), m.start(), m.end()))
    }

    /// [`Detector::find`], then the same on the percent-decoded text (`%XX` in any
    /// case, `+` as space) to catch partial or mixed escaping. For URLs, header values
    /// and form bodies. A hit only visible decoded is reported as [`Form::Url`] (or the
    /// inner form, e.g. base64 that was then percent-encoded).
    pub fn find_decoded(&self, haystack: &[u8]) -> Option<Finding> {
        if let Some(f) = self.find(haystack) {
            return Some(f);
        }
        let decoded = percent_decode(haystack)?;
        self.find(&decoded).map(|mut f| {
            if f.form == Form::Raw {
                f.form = Form::Url;
            }
            f
        })
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.m.needles.is_empty()
    }

    /// The longest needle; streams hold back at most this minus one byte.
    pub fn max_needle_len(&self) -> usize {
        self.m.max_len
    }
}

/// `%XX` (either case) decoded and `+` → space; `None` if nothing changed.
fn percent_decode(input: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if !input.iter().any(|&b| b == b'%' || b == b'+') {
        return None;
    }
    let val = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Zeroizing::new(Vec::with_capacity(input.len()));
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' if i + 2 < input.len() => match (val(input[i + 1]), val(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// Replaces needles with their counterparts: placeholder → real (injection) or real →
/// placeholder (scrubbing), keeping the encoding.
pub struct Rewrite {
    d: Detector,
    /// Replacement for each needle; zeroized on drop (injection replacements are real
    /// values).
    replacements: Vec<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewrite")
            .field("needles", &self.replacements.len())
            .finish_non_exhaustive()
    }
}

/// The result of a rewrite that changed something.
pub struct Rewritten {
    /// The new bytes (may hold real values: send them, never log them).
    pub bytes: Zeroizing<Vec<u8>>,
    /// The credentials whose values were replaced, without repeats, for the audit record.
    pub credentials: Vec<Arc<str>>,
}

impl fmt::Debug for Rewritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewritten")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("credentials", &self.credentials)
            .finish()
    }
}

fn note(list: &mut Vec<Arc<str>>, name: &Arc<str>) {
    if !list.iter().any(|n| n == name) {
        list.push(name.clone());
    }
}

impl Rewrite {
    /// Whether there is nothing to replace (the proxy can skip the body entirely).
    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }

    /// The detector for this rewrite's source needles.
    pub fn detector(&self) -> &Detector {
        &self.d
    }

    /// Replace every needle in `input`; `None` when there was none (the input stands).
    pub fn apply(&self, input: &[u8]) -> Option<Rewritten> {
        let mut out = Zeroizing::new(Vec::new());
        let mut credentials = Vec::new();
        let mut last = 0;
        for m in self.d.m.ac.find_iter(input) {
            let p = m.pattern().as_usize();
            out.extend_from_slice(&input[last..m.start()]);
            out.extend_from_slice(&self.replacements[p]);
            note(&mut credentials, &self.d.names[self.d.m.info[p].cred]);
            last = m.end();
        }
        if credentials.is_empty() {
            return None;
        }
        out.extend_from_slice(&input[last..]);
        Some(Rewritten {
            bytes: out,
            credentials,
        })
    }

    /// Rewrite one header value. Inside `Basic <base64>` the credentials are decoded,
    /// rewritten and re-encoded (a placeholder password inside `user:password` is
    /// replaced whatever its alignment); anything else (`Bearer <token>`, `x-api-key`,
    /// cookies) is rewritten in place in every form. `Ok(None)`: the value carries no
    /// needle and must be left exactly as it is. An error if the result would contain
    /// CR, LF or NUL.
    pub fn header_value(&self, value: &[u8]) -> Result<Option<Rewritten>, ScanError> {
        let result = self.basic(value).or_else(|| self.apply(value));
        if let Some(r) = &result
            && r.bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(ScanError::UnsafeHeaderValue {
                credential: r
                    .credentials
                    .first()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
            });
        }
        Ok(result)
    }

    fn basic(&self, value: &[u8]) -> Option<Rewritten> {
        let scheme_len = value.iter().position(|&b| b == b' ')?;
        if !value[..scheme_len].eq_ignore_ascii_case(b"basic") {
            return None;
        }
        let encoded = value[scheme_len..].trim_ascii();
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = Zeroizing::new(lenient.decode(encoded).ok()?);
        let inner = self.apply(&decoded)?;
        let mut out = Zeroizing::new(value[..scheme_len].to_vec());
        out.push(b' ');
        out.extend_from_slice(STANDARD.encode(&*inner.bytes).as_bytes());
        Some(Rewritten {
            bytes: out,
            credentials: inner.credentials,
        })
    }
}

/// Render a credential for `header` + `format` (SPEC §4): `{secret}` in `format`
/// replaced by the real value (`format` defaults to `"{secret}"`). Refuses values with
/// CR, LF or NUL.
pub fn render_header(
    credential: &str,
    format: Option<&str>,
    secret: &Secret,
) -> Result<Zeroizing<Vec<u8>>, ScanError> {
    let format = format.unwrap_or("{secret}");
    let (before, after) = match format.split_once("{secret}") {
        Some((b, a)) if !a.contains("{secret}") => (b, a),
        _ => {
            return Err(ScanError::BadFormat {
                credential: credential.to_string(),
                format: format.to_string(),
            });
        }
    };
    let mut out = Zeroizing::new(Vec::with_capacity(format.len() + secret.len()));
    out.extend_from_slice(before.as_bytes());
    out.extend_from_slice(secret.expose());
    out.extend_from_slice(after.as_bytes());
    if out.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ScanError::UnsafeHeaderValue {
            credential: credential.to_string(),
        });
    }
    Ok(out)
}

struct Entry {
    name: Arc<str>,
    hosts: Vec<String>,
    placeholder_text: Placeholder,
    real: Vec<(Form, Zeroizing<Vec<u8>>)>,
    placeholder: Vec<(Form, Zeroizing<Vec<u8>>)>,
}

/// A session's credentials with every encoded form precomputed. Build once at session
/// start; derive per-host detectors and rewrites from it.
pub struct SecretSet {
    entries: Vec<Entry>,
    all: Detector,
}

impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSet")
            .field(
                "credentials",
                &self.entries.iter().map(|e| &*e.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SecretSet {
    /// Precompute every form of every value. Errors: a real value shorter than
    /// [`MIN_SECRET_LEN`], a duplicate name.
    pub fn new(credentials: Vec<Credential>) -> Result<Self, ScanError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(credentials.len());
        for c in credentials {
            if c.real.len() < MIN_SECRET_LEN {
                return Err(ScanError::TooShort { credential: c.name });
            }
            if entries.iter().any(|e| *e.name == *c.name) {
                return Err(ScanError::DuplicateName { credential: c.name });
            }
            entries.push(Entry {
                name: Arc::from(c.name.as_str()),
                hosts: c.hosts,
                placeholder_text: c.placeholder.clone(),
                real: encodings(c.real.expose()),
                placeholder: encodings(c.placeholder.as_bytes()),
            });
        }
        let all = Self::detector(&entries, |_| true, |_| true)?;
        Ok(Self { entries, all })
    }

    fn detector(
        entries: &[Entry],
        include: impl Fn(&Entry) -> bool,
        which: impl Fn(Which) -> bool,
    ) -> Result<Detector, ScanError> {
        let mut items = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if !include(e) {
                continue;
            }
            for (w, forms) in [(Which::Real, &e.real), (Which::Placeholder, &e.placeholder)] {
                if !which(w) {
                    continue;
                }
                for (form, bytes) in forms {
                    items.push((
                        NeedleInfo {
                            cred: i,
                            which: w,
                            form: *form,
                        },
                        bytes.clone(),
                    ));
                }
            }
        }
        let (m, _) = Matcher::build(items)?;
        Ok(Detector {
            m,
            names: entries.iter().map(|e| e.name.clone()).collect(),
        })
    }

    fn rewrite(&self, include: impl Fn(&Entry) -> bool, from: Which) -> Result<Rewrite, ScanError> {
        let mut items = Vec::new();
        let mut targets = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if !include(e) {
                continue;
            }
            let (src, dst) = match from {
                Which::Placeholder => (&e.placeholder, &e.real),
                Which::Real => (&e.real, &e.placeholder),
            };
            for ((form, bytes), (_, target)) in src.iter().zip(dst) {
                items.push((
                    NeedleInfo {
                        cred: i,
                        which: from,
                        form: *form,
                    },
                    bytes.clone(),
                ));
                targets.push(target.clone());
            }
        }
        let (m, kept) = Matcher::build(items)?;
        let replacements = kept.into_iter().map(|k| targets[k].clone()).collect();
        Ok(Rewrite {
            d: Detector {
                m,
                names: self.entries.iter().map(|e| e.name.clone()).collect(),
            },
            replacements,
        })
    }

    /// The credentials' names and bound host patterns.
    pub fn credentials(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.entries.iter().map(|e| (&*e.name, e.hosts.as_slice()))
    }

    /// The placeholder of `credential` (for the session's `env` variable).
    pub fn placeholder(&self, credential: &str) -> Option<&Placeholder> {
        self.entries
            .iter()
            .find(|e| &*e.name == credential)
            .map(|e| &e.placeholder_text)
    }

    /// Any value (real or placeholder, any form) of any credential.
    pub fn find(&self, haystack: &[u8]) -> Option<Finding> {
        self.all.find(haystack)
    }

    /// The detector over every value of every credential.
    pub fn detector_all(&self) -> &Detector {
        &self.all
    }

    /// The exfiltration guard for one destination: a detector over every value (real
    /// and placeholder, every form) of the credentials for which `is_bound(name,
    /// hosts)` is false. Run it on what the agent sends *before* injection; any
    /// finding means: refuse (403) and record.
    pub fn guard_for(
        &self,
        is_bound: impl Fn(&str, &[String]) -> bool,
    ) -> Result<Detector, ScanError> {
        Self::detector(&self.entries, |e| !is_bound(&e.name, &e.hosts), |_| true)
    }

    /// Placeholder → real value (same form) for the credentials for which
    /// `is_bound(name, hosts)` is true.
    pub fn injector_for(
        &self,
        is_bound: impl Fn(&str, &[String]) -> bool,
    ) -> Result<Rewrite, ScanError> {
        self.rewrite(|e| is_bound(&e.name, &e.hosts), Which::Placeholder)
    }

    /// Real value → placeholder (same form) for every credential: for everything
    /// coming back into the session.
    pub fn scrubber(&self) -> Result<Rewrite, ScanError> {
        self.rewrite(|_| true, Which::Real)
    }
}

/// Detects values in a stream of chunks, keeping only the last
/// `max_needle_len - 1` bytes between chunks. It does not hold data back from the
/// caller: use [`StreamGuard`] when nothing of a value may be forwarded.
pub struct StreamScanner {
    d: Arc<Detector>,
    tail: Zeroizing<Vec<u8>>,
    /// Stream offset of `tail[0]`.
    offset: usize,
}

impl fmt::Debug for StreamScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScanner")
            .field("offset", &self.offset)
            .field("tail_len", &self.tail.len())
            .finish_non_exhaustive()
    }
}

impl StreamScanner {
    /// A scanner over `detector`'s needles.
    pub fn new(detector: Arc<Detector>) -> Self {
        Self {
            d: detector,
            tail: Zeroizing::new(Vec::new()),
            offset: 0,
        }
    }

    /// Scan the next chunk: the first value that ends inside it (a value split across
    /// chunks is found when its last byte arrives).
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Finding> {
        let old = self.tail.len();
        self.tail.extend_from_slice(chunk);
        let found = first_ending_after(&self.d.m.ac, &self.tail, old)
            .map(|(p, s, e)| self.d.finding(p, self.offset + s, self.offset + e));
        let keep = self.d.m.max_len.saturating_sub(1);
        let drop = self.tail.len().saturating_sub(keep);
        self.tail.drain(..drop);
        self.offset += drop;
        found
    }
}

/// The first match (leftmost-longest from successive starts) that ends after
/// `min_end`: matches entirely inside the old tail were already reported.
fn first_ending_after(
    ac: &AhoCorasick,
    hay: &[u8],
    min_end: usize,
) -> Option<(usize, usize, usize)> {
    let mut from = 0;
    while from <= hay.len() {
        let m = ac.find(Input::new(hay).span(from..hay.len()))?;
        if m.end() > min_end {
            return Some((m.pattern().as_usize(), m.start(), m.end()));
        }
        from = m.start() + 1;
    }
    None
}

/// The shared window logic of [`StreamGuard`] and [`StreamRewriter`].
struct Window {
    pending: Zeroizing<Vec<u8>>,
    offset: usize,
}

impl Window {
    fn new() -> Self {
        Self {
            pending: Zeroizing::new(Vec::new()),
            offset: 0,
        }
    }

    /// Walk `pending + chunk`: for each final match call `on_match(out, pattern,
    /// start, end)` (which may stop the walk by returning `Err`), copy the bytes
    /// between matches to `out`, and keep only what may still begin a needle.
    fn feed<E>(
        &mut self,
        m: &Matcher,
        chunk: &[u8],
        out: &mut Vec<u8>,
        finish: bool,
        mut on_match: impl FnMut(&mut Vec<u8>, usize, usize, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        self.pending.extend_from_slice(chunk);
        let buf = &self.pending;
        let len = buf.len();
        let mut pos = 0;
        let mut hold = if finish { len } else { m.hold_from(buf, 0) };
        let result = loop {
            match m.ac.find(Input::new(buf).span(pos..len)) {
                Some(found) if found.start() < hold => {
                    out.extend_from_slice(&buf[pos..found.start()]);
                    if let Err(e) = on_match(
                        out,
                        found.pattern().as_usize(),
                        self.offset + found.start(),
                        self.offset + found.end(),
                    ) {
                        break Err(e);
                    }
                    pos = found.end();
                    if pos > hold {
                        hold = if finish { len } else { m.hold_from(buf, pos) };
                    }
                }
                _ => {
                    out.extend_from_slice(&buf[pos..hold]);
                    pos = hold;
                    break Ok(());
                }
            }
        };
        self.pending.drain(..pos);
        self.offset += pos;
        result
    }
}

/// An exfiltration guard over a stream: it releases only bytes that cannot be part of
/// a value and stops at the first value, so a refused request never forwarded any byte
/// of it.
pub struct StreamGuard {
    d: Arc<Detector>,
    w: Window,
    blocked: Option<Finding>,
}

impl fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamGuard")
            .field("held", &self.w.pending.len())
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

impl StreamGuard {
    /// A guard over `detector`'s needles (usually [`SecretSet::guard_for`]).
    pub fn new(detector: Arc<Detector>) -> Self {
        Self {
            d: detector,
            w: Window::new(),
            blocked: None,
        }
    }

    /// Append to `out` what of `chunk` is safe to forward now. `Err`: a value was
    /// found; abort the request (every later call returns the same finding).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), Finding> {
        self.step(chunk, out, false)
    }

    /// End of stream: release the held bytes (or report the value they hold).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Finding> {
        self.step(&[], out, true)
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.w.pending.len()
    }

    fn step(&mut self, chunk: &[u8], out: &mut Vec<u8>, finish: bool) -> Result<(), Finding> {
        if let Some(f) = &self.blocked {
            return Err(f.clone());
        }
        let d = &self.d;
        let result = self.w.feed(&d.m, chunk, out, finish, |_, p, s, e| {
            Err(d.finding(p, s, e))
        });
        if let Err(f) = &result {
            self.blocked = Some(f.clone());
            self.w.pending.clear();
        }
        result
    }
}

/// Rewrites a stream chunk by chunk (see the module docs for what is held back).
pub struct StreamRewriter {
    rw: Arc<Rewrite>,
    w: Window,
    used: Vec<Arc<str>>,
}

impl fmt::Debug for StreamRewriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRewriter")
            .field("held", &self.w.pending.len())
            .field("credentials_used", &self.used)
            .finish_non_exhaustive()
    }
}

impl StreamRewriter {
    /// A rewriter applying `rewrite`.
    pub fn new(rewrite: Arc<Rewrite>) -> Self {
        Self {
            rw: rewrite,
            w: Window::new(),
            used: Vec::new(),
        }
    }

    /// Append to `out` the rewritten bytes that can be released now.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.step(chunk, out, false);
    }

    /// End of stream: flush everything held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.step(&[], out, true);
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.w.pending.len()
    }

    /// Credentials replaced so far, without repeats (for the audit record).
    pub fn credentials_used(&self) -> &[Arc<str>] {
        &self.used
    }

    fn step(&mut self, chunk: &[u8], out: &mut Vec<u8>, finish: bool) {
        let rw = &self.rw;
        let used = &mut self.used;
        let _ = self.w.feed(&rw.d.m, chunk, out, finish, |out, p, _, _| {
            out.extend_from_slice(&rw.replacements[p]);
            note(used, &rw.d.names[rw.d.m.info[p].cred]);
            Ok::<(), std::convert::Infallible>(())
        });
    }
}
