//! Secret scanning of tool arguments and results, on `warden-secrets`.
//!
//! The session's credentials form one [`SecretSet`] (real values and placeholders,
//! raw and base64-, URL- and hex-encoded). Per server the gateway keeps a guard
//! ([`SecretSet::guard_for`]) over the credentials that server is *not* bound to: a
//! hit in its arguments refuses the call. Results and everything else coming back
//! from a server go through the set's scrubber ([`SecretSet::scrubber`]): a real value
//! becomes the session's placeholder, in the same encoding, as the egress proxy does
//! with a bound host's responses. Well-known token formats
//! ([`warden_secrets::patterns`]) are refused in arguments towards any server and
//! redacted (`[REDACTED:<format>]`) from results, except where a session credential
//! (its placeholder keeps the vendor prefix and shape) accounts for the span.
//!
//! JSON strings are scanned after JSON decoding (so `\u` escapes do not hide a value)
//! with [`Detector::find_decoded`] (partial percent-encoding too). Findings carry
//! credential and format names, never values.

use serde_json::Value;
use warden_secrets::patterns::{self, TokenMatch};
use warden_secrets::{Credential, Detector, Placeholder, Rewrite, ScanError, SecretSet};

use crate::config::{GatewayCredential, ServerConfig};

/// One finding: a credential of the session, or a token format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The credential's name, or the format (`aws-access-key`, ...).
    pub name: String,
    /// Whether `name` is a session credential (else a generic format).
    pub credential: bool,
}

/// The compiled scanners of one gateway.
pub struct Secrets {
    set: Option<SecretSet>,
    /// Per server (same order as the configuration): the guard for its arguments.
    guards: Vec<Option<Detector>>,
    scrubber: Option<Rewrite>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Build from the session's credentials (a placeholder is made for each that has
    /// none) and the servers' bindings.
    pub fn new(
        credentials: &[GatewayCredential],
        servers: &[ServerConfig],
    ) -> Result<Self, ScanError> {
        if credentials.is_empty() {
            return Ok(Self {
                set: None,
                guards: servers.iter().map(|_| None).collect(),
                scrubber: None,
            });
        }
        let mut rng = rand::rng();
        let creds = credentials
            .iter()
            .map(|c| Credential {
                name: c.name.clone(),
                real: c.secret.clone(),
                placeholder: c
                    .placeholder
                    .clone()
                    .unwrap_or_else(|| Placeholder::for_secret(&c.secret, &mut rng)),
                hosts: c.hosts.clone(),
            })
            .collect();
        let set = SecretSet::new(creds)?;
        let mut guards = Vec::with_capacity(servers.len());
        for s in servers {
            let g = set.guard_for(|name, _| s.credentials.iter().any(|c| c == name))?;
            guards.push((!g.is_empty()).then_some(g));
        }
        let scrubber = Some(set.scrubber()?);
        Ok(Self {
            set: Some(set),
            guards,
            scrubber,
        })
    }

    /// The placeholder of a credential (for a stdio server's environment).
    pub fn placeholder(&self, credential: &str) -> Option<&Placeholder> {
        self.set.as_ref()?.placeholder(credential)
    }

    /// What in `args` must not go to server number `idx`: credentials it is not bound
    /// to (any value, any form) and token formats no credential accounts for.
    pub fn refusals(&self, idx: usize, args: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let guard = self.guards.get(idx).and_then(Option::as_ref);
        walk(args, &mut |s| {
            let bytes = s.as_bytes();
            if let Some(g) = guard
                && let Some(f) = g.find_decoded(bytes)
            {
                push(&mut out, &f.credential, true);
            }
            for t in self.unexplained_tokens(bytes) {
                push(&mut out, t.kind, false);
            }
        });
        out
    }

    /// The names of [`Secrets::refusals`], for a refusal's reason.
    pub fn refused_names(&self, idx: usize, args: &Value) -> Vec<String> {
        self.refusals(idx, args)
            .into_iter()
            .map(|f| f.name)
            .collect()
    }

    /// Token-format matches in `bytes` that are not a session credential's value.
    fn unexplained_tokens(&self, bytes: &[u8]) -> Vec<TokenMatch> {
        let tokens = patterns::find_tokens(bytes);
        if tokens.is_empty() {
            return tokens;
        }
        let spans: Vec<(usize, usize)> = match &self.set {
            Some(set) => set
                .detector_all()
                .find_iter(bytes)
                .map(|f| (f.start, f.end))
                .collect(),
            None => Vec::new(),
        };
        tokens
            .into_iter()
            .filter(|t| !patterns::overlaps(t.start, t.end, &spans))
            .collect()
    }

    /// Scrub a message coming back from a server: real values become placeholders,
    /// token formats `[REDACTED:<format>]`; a key that carries either is dropped.
    /// Returns what was found.
    pub fn scrub(&self, v: &mut Value) -> Vec<Finding> {
        let mut found = Vec::new();
        self.scrub_value(v, &mut found);
        found
    }

    fn scrub_str(&self, s: &str, found: &mut Vec<Finding>) -> Option<String> {
        let mut text: Option<String> = None;
        if let Some(r) = &self.scrubber
            && let Some(done) = r.apply(s.as_bytes())
        {
            for c in &done.credentials {
                push(found, c, true);
            }
            // Placeholders are ASCII and replace whole values, so the result stays
            // UTF-8; anything else would be a bug in the set, and is then dropped.
            text = Some(String::from_utf8(done.bytes.to_vec()).unwrap_or_default());
        }
        let current = text.as_deref().unwrap_or(s);
        let tokens = self.unexplained_tokens(current.as_bytes());
        if tokens.is_empty() {
            return text;
        }
        let mut out = String::with_capacity(current.len());
        let mut pos = 0;
        for t in tokens {
            out.push_str(current.get(pos..t.start).unwrap_or_default());
            out.push_str(&format!("[REDACTED:{}]", t.kind));
            push(found, t.kind, false);
            pos = t.end;
        }
        out.push_str(current.get(pos..).unwrap_or_default());
        Some(out)
    }

    fn scrub_value(&self, v: &mut Value, found: &mut Vec<Finding>) {
        match v {
            Value::String(s) => {
                if let Some(r) = self.scrub_str(s, found) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.scrub_value(x, found)),
            Value::Object(m) => {
                // Keys are rare carriers; a key holding a secret is dropped entirely.
                let mut key_found = Vec::new();
                let bad: Vec<String> = m
                    .keys()
                    .filter(|k| self.scrub_str(k, &mut key_found).is_some())
                    .cloned()
                    .collect();
                for k in bad {
                    m.remove(&k);
                }
                for f in key_found {
                    push(found, &f.name, f.credential);
                }
                m.values_mut().for_each(|x| self.scrub_value(x, found));
            }
            _ => {}
        }
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

/// Every string in a JSON value, keys included.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use base64::Engine;
    use serde_json::json;
    use warden_secrets::Secret;

    const REAL: &str = "ghp_R3alR3alR3alR3alR3alR3alR3alR3alR3al";

    fn secrets() -> Secrets {
        let mut bound = ServerConfig::new("github", Transport::Url("http://x/".into()));
        bound.credentials = vec!["github".into()];
        let other = ServerConfig::new("other", Transport::Url("http://y/".into()));
        Secrets::new(
            &[GatewayCredential {
                name: "github".into(),
                secret: Secret::new(REAL.as_bytes().to_vec()),
                placeholder: None,
                hosts: vec!["api.github.com".into()],
            }],
            &[bound, other],
        )
        .unwrap()
    }

    #[test]
    fn credential_refused_only_towards_unbound_servers() {
        let sc = secrets();
        let ph = sc.placeholder("github").unwrap().to_string();
        assert_ne!(ph, REAL);
        for s in [
            REAL.to_string(),
            ph.clone(),
            base64::engine::general_purpose::STANDARD.encode(REAL),
            hex_lower(REAL),
            format!("prefix {} suffix", urlish(&ph)),
        ] {
            let args = json!({"a": [s]});
            let f = sc.refusals(1, &args);
            assert_eq!(
                f,
                vec![Finding {
                    name: "github".into(),
                    credential: true
                }]
            );
            // The bound server may receive it; the placeholder's ghp_ shape is not
            // mistaken for a foreign GitHub token.
            assert!(
                sc.refusals(0, &args).is_empty(),
                "{:?}",
                sc.refusals(0, &args)
            );
        }
        assert!(sc.refusals(1, &json!({"a": "harmless"})).is_empty());
    }

    #[test]
    fn token_formats_refused_everywhere() {
        let sc = secrets();
        let f = sc.refusals(0, &json!({"k": "AKIAABCDEFGHIJKLMNOP"}));
        assert_eq!(f[0].name, "aws-access-key");
        assert!(!f[0].credential);
        let f = sc.refusals(0, &json!({"ghp_abcdefghijklmnopqrstuvwxyz0123456789": 1}));
        assert_eq!(f[0].name, "github-token");
    }

    #[test]
    fn results_get_placeholders_and_redactions() {
        let sc = secrets();
        let ph = sc.placeholder("github").unwrap().to_string();
        let mut v = json!({"content": [{"type": "text",
            "text": format!("token={REAL}; aws=AKIAABCDEFGHIJKLMNOP; again {ph}")}]});
        let f = sc.scrub(&mut v);
        let text = v["content"][0]["text"].as_str().unwrap();
        assert_eq!(
            text,
            format!("token={ph}; aws=[REDACTED:aws-access-key]; again {ph}")
        );
        assert!(f.iter().any(|x| x.name == "github" && x.credential));
        assert!(
            f.iter()
                .any(|x| x.name == "aws-access-key" && !x.credential)
        );
    }

    #[test]
    fn no_credentials_still_catches_formats() {
        let sc = Secrets::new(&[], &[]).unwrap();
        let mut v = json!(["-----BEGIN PRIVATE KEY-----\nabc"]);
        sc.scrub(&mut v);
        assert_eq!(v[0], "[REDACTED:private-key]\nabc");
        assert_eq!(sc.refusals(5, &json!("xoxb-1234567890-abc")).len(), 1);
    }

    fn hex_lower(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn urlish(s: &str) -> String {
        // Partial percent-encoding: only the first character escaped.
        let mut it = s.chars();
        let first = it.next().unwrap();
        format!("%{:02X}{}", first as u32, it.collect::<String>())
    }
}
