//! Well-known token formats, recognised without knowing any value: AWS access key ids
//! (`AKIA…`/`ASIA…`), GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`,
//! `github_pat_`), Anthropic and OpenAI keys (`sk-ant-…`, `sk-…`), Slack tokens
//! (`xoxb-`, `xoxp-`, `xoxa-`, `xoxs-`) and PEM private-key headers.
//!
//! For what a session's [`crate::SecretSet`] cannot cover: a token the agent found
//! somewhere (a file, an environment it should not have seen) and tries to pass on.
//! The MCP gateway refuses such arguments and redacts them from results; the egress
//! proxy can use the same list for request bodies.
//!
//! Raw bytes only (no base64/url/hex forms): these are shapes, not values, and their
//! encodings are not recognisable without decoding first. A placeholder keeps its
//! value's vendor prefix and shape, so it matches here too: callers that know the
//! session's credentials should attribute spans a [`crate::Detector`] also finds to
//! that credential (see [`overlaps`]).

/// One token found by its format. Offsets into the haystack; never the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenMatch {
    /// The format's short name for audit records: `aws-access-key`, `github-token`,
    /// `anthropic-key`, `openai-key`, `slack-token`, `private-key`.
    pub kind: &'static str,
    /// Byte offset of the match.
    pub start: usize,
    /// Byte offset just past it.
    pub end: usize,
}

/// Which bytes may follow a prefix.
#[derive(Clone, Copy)]
enum Body {
    /// `[0-9A-Z]`
    UpperDigit,
    /// `[0-9A-Za-z]`
    Alnum,
    /// `[0-9A-Za-z_]`
    Word,
    /// `[0-9A-Za-z_-]`
    AlnumDash,
    /// `[A-Z ]*` then `PRIVATE KEY-----`.
    PemHeader,
}

impl Body {
    fn accepts(self, b: u8) -> bool {
        match self {
            Body::UpperDigit => b.is_ascii_uppercase() || b.is_ascii_digit(),
            Body::Alnum => b.is_ascii_alphanumeric(),
            Body::Word => b.is_ascii_alphanumeric() || b == b'_',
            Body::AlnumDash => b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
            Body::PemHeader => b.is_ascii_uppercase() || b == b' ',
        }
    }
}

/// One format: `(prefix, kind, body, min, max, bounded)` — the prefix, the kind
/// reported, the bytes the body is made of, its length range, and whether the body
/// must end at a word boundary (fixed-length formats).
type Format = (&'static [u8], &'static str, Body, usize, usize, bool);

/// Longest prefixes first, so `sk-ant-` wins over `sk-`.
const FORMATS: &[Format] = &[
    (b"-----BEGIN ", "private-key", Body::PemHeader, 0, 40, false),
    (b"github_pat_", "github-token", Body::Word, 22, 255, true),
    (b"sk-ant-", "anthropic-key", Body::AlnumDash, 20, 512, false),
    (b"AKIA", "aws-access-key", Body::UpperDigit, 16, 16, true),
    (b"ASIA", "aws-access-key", Body::UpperDigit, 16, 16, true),
    (b"ghp_", "github-token", Body::Alnum, 36, 36, true),
    (b"gho_", "github-token", Body::Alnum, 36, 36, true),
    (b"ghu_", "github-token", Body::Alnum, 36, 36, true),
    (b"ghs_", "github-token", Body::Alnum, 36, 36, true),
    (b"ghr_", "github-token", Body::Alnum, 36, 36, true),
    (b"xoxb-", "slack-token", Body::AlnumDash, 10, 512, false),
    (b"xoxp-", "slack-token", Body::AlnumDash, 10, 512, false),
    (b"xoxa-", "slack-token", Body::AlnumDash, 10, 512, false),
    (b"xoxs-", "slack-token", Body::AlnumDash, 10, 512, false),
    (b"sk-", "openai-key", Body::AlnumDash, 20, 512, false),
];

const PEM_LABEL_END: &[u8] = b"PRIVATE KEY";
const PEM_DASHES: &[u8] = b"-----";

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The end of a match of `fmt` whose prefix starts at `start`, if it is one.
fn match_at(fmt: &Format, haystack: &[u8], start: usize) -> Option<usize> {
    let &(prefix, _, body_kind, min, max, bounded) = fmt;
    let rest = haystack.get(start..)?;
    if !rest.starts_with(prefix) {
        return None;
    }
    // A token starts at a word boundary (the PEM header starts with '-', no boundary).
    if prefix[0] != b'-' && start > 0 && haystack.get(start - 1).is_some_and(|&b| is_word(b)) {
        return None;
    }
    let body_start = start + prefix.len();
    let body = haystack.get(body_start..).unwrap_or_default();
    let run = body
        .iter()
        .take(max + 1)
        .take_while(|&&b| body_kind.accepts(b))
        .count();
    if let Body::PemHeader = body_kind {
        // `[A-Z ]*PRIVATE KEY-----`: the run must end in "PRIVATE KEY".
        let label = body.get(..run)?;
        if !label.ends_with(PEM_LABEL_END) || !body.get(run..)?.starts_with(PEM_DASHES) {
            return None;
        }
        return Some(body_start + run + PEM_DASHES.len());
    }
    if run < min || (bounded && run > max) {
        return None;
    }
    let run = run.min(max);
    let end = body_start + run;
    if bounded && haystack.get(end).is_some_and(|&b| is_word(b)) {
        return None;
    }
    Some(end)
}

/// Every token in `haystack`, left to right, not overlapping (at each position the
/// longest prefix wins).
pub fn find_tokens(haystack: &[u8]) -> Vec<TokenMatch> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < haystack.len() {
        let b = haystack[i];
        if !matches!(b, b'-' | b'g' | b's' | b'A' | b'x') {
            i += 1;
            continue;
        }
        let hit = FORMATS
            .iter()
            .find_map(|fmt| match_at(fmt, haystack, i).map(|end| (fmt.1, end)));
        match hit {
            Some((kind, end)) => {
                out.push(TokenMatch {
                    kind,
                    start: i,
                    end,
                });
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    out
}

/// Whether any token format occurs in `haystack`.
pub fn contains_token(haystack: &[u8]) -> bool {
    !find_tokens(haystack).is_empty()
}

/// Whether `[start, end)` overlaps any of `spans` (e.g. the spans of
/// [`crate::Detector::find_iter`] findings, to leave a session credential's own
/// placeholder to the credential rules).
pub fn overlaps(start: usize, end: usize, spans: &[(usize, usize)]) -> bool {
    spans.iter().any(|&(s, e)| start < e && s < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<&'static str> {
        find_tokens(s.as_bytes()).iter().map(|m| m.kind).collect()
    }

    #[test]
    fn finds_each_format() {
        for (s, kind) in [
            ("id AKIAABCDEFGHIJKLMNOP end", "aws-access-key"),
            ("ASIA0123456789ABCDEF", "aws-access-key"),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github-token"),
            (
                "x=gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789;",
                "github-token",
            ),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
                "github-token",
            ),
            ("sk-ant-api03-abcdefghijklmnopqrstuv", "anthropic-key"),
            ("sk-proj-abcdefghijklmnopqrstuvwx", "openai-key"),
            ("sk-abcdefghijklmnopqrstuvwx", "openai-key"),
            ("xoxb-1234567890-abc", "slack-token"),
            ("xoxp-1234567890-abc", "slack-token"),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "private-key"),
            ("-----BEGIN PRIVATE KEY-----", "private-key"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private-key"),
            ("-----BEGIN ENCRYPTED PRIVATE KEY-----", "private-key"),
        ] {
            assert_eq!(kinds(s), vec![kind], "{s}");
        }
    }

    #[test]
    fn spans_cover_the_token_only() {
        let s = "token=AKIAABCDEFGHIJKLMNOP;";
        let m = find_tokens(s.as_bytes());
        assert_eq!(&s[m[0].start..m[0].end], "AKIAABCDEFGHIJKLMNOP");
        let s = "a -----BEGIN EC PRIVATE KEY----- b";
        let m = find_tokens(s.as_bytes());
        assert_eq!(&s[m[0].start..m[0].end], "-----BEGIN EC PRIVATE KEY-----");
    }

    #[test]
    fn ordinary_text_is_not_a_token() {
        for s in [
            "",
            "AKIA",
            "AKIAABCDEFGHIJKLMNO",   // 15 characters
            "AKIAABCDEFGHIJKLMNOPQ", // 17
            "XAKIAABCDEFGHIJKLMNOP", // no boundary before
            "ghp_short",
            "task-manager and sk-short",
            "ask-anthropic-abcdefghijklmnopqrstuvwxyz", // 'a' before "sk-"
            "xoxb-short",
            "-----BEGIN CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----",
            "github_pat_short",
            "gh-pages, skip-list, xox-",
        ] {
            assert!(kinds(s).is_empty(), "{s}: {:?}", kinds(s));
        }
        assert!(!contains_token(b"plain words"));
        assert!(contains_token(b"ghp_abcdefghijklmnopqrstuvwxyz0123456789"));
    }

    #[test]
    fn several_tokens_in_order() {
        let s = "a AKIAABCDEFGHIJKLMNOP b xoxs-0123456789ab c";
        assert_eq!(kinds(s), vec!["aws-access-key", "slack-token"]);
    }

    #[test]
    fn overlap_check() {
        assert!(overlaps(2, 5, &[(4, 9)]));
        assert!(!overlaps(2, 4, &[(4, 9)]));
        assert!(!overlaps(0, 3, &[]));
    }
}
