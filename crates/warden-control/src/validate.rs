//! Policy validation on push: exactly warden-policy's checks and diagnostics, so a push
//! fails with the same errors as `warden policy check`. Also the target syntax and
//! which `vault:` credentials a policy binds.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One diagnostic, as `warden policy check` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiagnosticJson {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
    pub hint: Option<String>,
}

/// A policy that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub name: String,
    /// `name@digest`.
    pub id: String,
}

/// A policy that did not.
#[derive(Debug, Clone, Serialize)]
pub struct Invalid {
    pub diagnostics: Vec<DiagnosticJson>,
    /// The diagnostics rendered rustc-style, as the CLI prints them.
    pub rendered: String,
}

/// Validate `source` as if it were the file `origin` in directory `base_dir`.
pub fn validate(source: &str, origin: &str, base_dir: &Path) -> Result<Validated, Invalid> {
    match warden_policy::Policy::parse(source, origin, base_dir) {
        Ok(p) => Ok(Validated {
            name: p.name().to_string(),
            id: p.id().to_string(),
        }),
        Err(e) => Err(Invalid {
            diagnostics: e
                .diagnostics()
                .iter()
                .map(|d| DiagnosticJson {
                    file: d.file.clone(),
                    line: d.line,
                    col: d.col,
                    message: d.message.clone(),
                    hint: d.hint.clone(),
                })
                .collect(),
            rendered: e.to_string(),
        }),
    }
}

/// Where a policy applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Label(String, String),
    Machine(String),
}

impl Target {
    /// Parse `all`, `label:K=V` or `machine:ID`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Target::All);
        }
        if let Some(rest) = s.strip_prefix("label:")
            && let Some((k, v)) = rest.split_once('=')
            && !k.trim().is_empty()
        {
            return Ok(Target::Label(k.trim().to_string(), v.trim().to_string()));
        }
        if let Some(id) = s.strip_prefix("machine:")
            && !id.trim().is_empty()
        {
            return Ok(Target::Machine(id.trim().to_string()));
        }
        Err(format!(
            "invalid target {s:?}: expected all, label:KEY=VALUE or machine:ID"
        ))
    }

    /// How specific the target is: machine > label > all.
    pub fn rank(&self) -> u8 {
        match self {
            Target::All => 1,
            Target::Label(..) => 2,
            Target::Machine(_) => 3,
        }
    }

    pub fn matches(&self, machine: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Target::All => true,
            Target::Label(k, v) => labels.get(k) == Some(v),
            Target::Machine(id) => id == machine,
        }
    }
}

/// The `vault:NAME` credentials a policy source binds.
pub fn vault_bindings(source: &str) -> Vec<String> {
    let Ok(value) = source.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(creds) = value.get("credentials").and_then(|c| c.as_array()) else {
        return Vec::new();
    };
    creds
        .iter()
        .filter_map(|c| c.get("source")?.as_str()?.strip_prefix("vault:"))
        .map(|s| s.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("all"), Ok(Target::All));
        assert_eq!(
            Target::parse("label:team=ml"),
            Ok(Target::Label("team".into(), "ml".into()))
        );
        assert_eq!(
            Target::parse("machine:m-1"),
            Ok(Target::Machine("m-1".into()))
        );
        assert!(Target::parse("label:=x").is_err());
        assert!(Target::parse("everyone").is_err());
    }

    #[test]
    fn vault() {
        let src = "version = 1\n[[credentials]]\nname='a'\nsource='vault:gh'\nhosts=['x']\n\
                   [[credentials]]\nname='b'\nsource='env:B'\nhosts=['y']\n";
        assert_eq!(vault_bindings(src), vec!["gh".to_string()]);
    }
}
