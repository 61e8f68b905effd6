//! Secret scanning of tool arguments and results.
//!
//! Looks for the session's secrets — real values and placeholders, raw and base64-,
//! URL- and hex-encoded — and for common token formats. A hit in the arguments of a
//! call to a server that is not bound to that credential refuses the call; a hit in a
//! result is replaced by `[REDACTED:<name>]`. Matches report credential *names*, never
//! values.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use regex::Regex;
use serde_json::Value;

use crate::config::SessionSecret;

/// What a needle stands for.
#[derive(Debug, Clone)]
struct Label {
    /// The credential name, or the token format (`aws-access-key`, ...).
    name: String,
    /// Whether `name` is a policy credential (bound to servers) or a generic format.
    credential: bool,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub name: String,
    pub credential: bool,
}

/// The compiled scanner for one gateway.
#[derive(Debug)]
pub struct Scanner {
    literals: Option<AhoCorasick>,
    labels: Vec<Label>,
    formats: Vec<(Regex, &'static str)>,
}

const MIN_LEN: usize = 8;

fn encodings(v: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(s) = std::str::from_utf8(v) {
        out.push(s.to_string());
        let url: String = s
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if url != s {
            out.push(url.clone());
            out.push(url.to_lowercase());
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(v);
    out.push(b64);
    out.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v));
    out.push(hex::encode(v));
    out.push(hex::encode_upper(v));
    out.retain(|s| s.len() >= MIN_LEN);
    out.sort();
    out.dedup();
    out
}

impl Scanner {
    /// Build from the session's secrets.
    pub fn new(secrets: &[SessionSecret]) -> Self {
        let mut needles = Vec::new();
        let mut labels = Vec::new();
        for s in secrets {
            let mut values: Vec<Vec<u8>> = Vec::new();
            if let Some(v) = &s.value {
                values.push(v.expose().to_vec());
            }
            if let Some(p) = &s.placeholder {
                values.push(p.as_bytes().to_vec());
            }
            for v in values {
                for e in encodings(&v) {
                    needles.push(e);
                    labels.push(Label {
                        name: s.name.clone(),
                        credential: true,
                    });
                }
            }
        }
        let literals = if needles.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&needles)
                .ok()
        };
        let formats = [
            (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "aws-access-key"),
            (r"\bghp_[0-9A-Za-z]{36}\b", "github-token"),
            (r"\bgh[ousr]_[0-9A-Za-z]{36}\b", "github-token"),
            (r"\bgithub_pat_[0-9A-Za-z_]{22,255}\b", "github-token"),
            (r"\bsk-ant-[0-9A-Za-z_\-]{20,}", "anthropic-key"),
            (r"\bsk-(?:proj-)?[0-9A-Za-z_\-]{20,}", "openai-key"),
            (r"\bxox[bpas]-[0-9A-Za-z\-]{10,}", "slack-token"),
            (r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----", "private-key"),
        ]
        .into_iter()
        .filter_map(|(p, n)| Regex::new(p).ok().map(|r| (r, n)))
        .collect();
        Self {
            literals,
            labels,
            formats,
        }
    }

    /// Every finding in a string.
    pub fn scan_str(&self, s: &str, out: &mut Vec<Finding>) {
        if let Some(ac) = &self.literals {
            for m in ac.find_iter(s) {
                if let Some(l) = self.labels.get(m.pattern().as_usize()) {
                    push(out, &l.name, l.credential);
                }
            }
        }
        for (re, name) in &self.formats {
            if re.is_match(s) {
                push(out, name, false);
            }
        }
    }

    /// Every finding in a JSON value (keys and string values).
    pub fn scan(&self, v: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        walk(v, &mut |s| self.scan_str(s, &mut out));
        out
    }

    /// Replace every finding in the value's strings. Returns the names redacted.
    pub fn redact(&self, v: &mut Value) -> Vec<Finding> {
        let mut found = Vec::new();
        redact_value(self, v, &mut found);
        found
    }

    fn redact_str(&self, s: &str, found: &mut Vec<Finding>) -> Option<String> {
        let mut spans: Vec<(usize, usize, String, bool)> = Vec::new();
        if let Some(ac) = &self.literals {
            for m in ac.find_iter(s) {
                if let Some(l) = self.labels.get(m.pattern().as_usize()) {
                    spans.push((m.start(), m.end(), l.name.clone(), l.credential));
                }
            }
        }
        for (re, name) in &self.formats {
            for m in re.find_iter(s) {
                spans.push((m.start(), m.end(), (*name).to_string(), false));
            }
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|x| (x.0, std::cmp::Reverse(x.1)));
        let mut out = String::with_capacity(s.len());
        let mut pos = 0;
        for (start, end, name, cred) in spans {
            if start < pos {
                continue;
            }
            out.push_str(s.get(pos..start).unwrap_or(""));
            out.push_str(&format!("[REDACTED:{name}]"));
            push(found, &name, cred);
            pos = end;
        }
        out.push_str(s.get(pos..).unwrap_or(""));
        Some(out)
    }
}

fn push(out: &mut Vec<Finding>, name: &str, credential: bool) {
    if !out
        .iter()
        .any(|f| f.name == name && f.credential == credential)
    {
        out.push(Finding {
            name: name.to_string(),
            credential,
        });
    }
}

fn walk(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        Value::Object(m) => {
            for (k, x) in m {
                f(k);
                walk(x, f);
            }
        }
        _ => {}
    }
}

fn redact_value(sc: &Scanner, v: &mut Value, found: &mut Vec<Finding>) {
    match v {
        Value::String(s) => {
            if let Some(r) = sc.redact_str(s, found) {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_value(sc, x, found)),
        Value::Object(m) => {
            // Keys are rare carriers; a key holding a secret is dropped entirely.
            let bad: Vec<String> = m
                .keys()
                .filter(|k| sc.redact_str(k, &mut Vec::new()).is_some())
                .cloned()
                .collect();
            for k in bad {
                m.remove(&k);
                push(found, "key", false);
            }
            m.values_mut().for_each(|x| redact_value(sc, x, found));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use warden_secrets::Secret;

    fn scanner() -> Scanner {
        Scanner::new(&[SessionSecret {
            name: "github".into(),
            value: Some(Secret::new(b"s3cr3t-value-123".to_vec())),
            placeholder: Some("WARDEN_PLACEHOLDER_github_0123456789abcdef".into()),
        }])
    }

    #[test]
    fn finds_raw_and_encoded_values() {
        let sc = scanner();
        for s in [
            "x s3cr3t-value-123 y".to_string(),
            base64::engine::general_purpose::STANDARD.encode("s3cr3t-value-123"),
            hex::encode("s3cr3t-value-123"),
            "WARDEN_PLACEHOLDER_github_0123456789abcdef".to_string(),
        ] {
            let f = sc.scan(&json!({"a": [s]}));
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0].name, "github");
        }
        assert!(sc.scan(&json!({"a": "harmless"})).is_empty());
    }

    #[test]
    fn finds_token_formats() {
        let sc = scanner();
        for (s, n) in [
            ("AKIAABCDEFGHIJKLMNOP", "aws-access-key"),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github-token"),
            ("sk-ant-api03-abcdefghijklmnopqrstuv", "anthropic-key"),
            ("xoxb-1234567890-abc", "slack-token"),
            ("-----BEGIN RSA PRIVATE KEY-----", "private-key"),
        ] {
            let f = sc.scan(&json!(s));
            assert!(f.iter().any(|x| x.name == n), "{s}: {f:?}");
        }
    }

    #[test]
    fn redacts() {
        let sc = scanner();
        let mut v = json!({"content": [{"type": "text", "text": "token=s3cr3t-value-123;"}]});
        let f = sc.redact(&mut v);
        assert_eq!(f.len(), 1);
        assert_eq!(v["content"][0]["text"], "token=[REDACTED:github];");
    }
}
