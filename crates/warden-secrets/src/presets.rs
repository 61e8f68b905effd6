//! The provider credentials the `balanced` preset binds when their variables are set
//! on the host (issue 5 item 9), so `warden run -- claude` works with a key the agent
//! never sees.

use std::collections::HashMap;

/// A credential to bind: `[[credentials]] name`, `source = "env:<env_var>"`,
/// `env = <env_var>`, `hosts = <hosts>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderBinding {
    /// Credential name.
    pub name: &'static str,
    /// The variable read on the host and replaced by a placeholder in the session.
    pub env_var: &'static str,
    /// The only hosts the real value may reach.
    pub hosts: &'static [&'static str],
}

/// Every provider Warden knows, in order.
pub const PROVIDERS: &[ProviderBinding] = &[
    ProviderBinding {
        name: "anthropic",
        env_var: "ANTHROPIC_API_KEY",
        hosts: &["api.anthropic.com"],
    },
    ProviderBinding {
        name: "openai",
        env_var: "OPENAI_API_KEY",
        hosts: &["api.openai.com"],
    },
    ProviderBinding {
        name: "gemini",
        env_var: "GEMINI_API_KEY",
        hosts: &["generativelanguage.googleapis.com"],
    },
    ProviderBinding {
        name: "google",
        env_var: "GOOGLE_API_KEY",
        hosts: &["generativelanguage.googleapis.com"],
    },
    ProviderBinding {
        name: "gh",
        env_var: "GH_TOKEN",
        hosts: &["api.github.com", "github.com"],
    },
    ProviderBinding {
        name: "github",
        env_var: "GITHUB_TOKEN",
        hosts: &["api.github.com", "github.com"],
    },
];

/// The providers whose variable is set (non-empty) in `env`. The caller skips any
/// whose `env_var` the policy already binds explicitly (the policy wins) and loads
/// each with `Source::Env(env_var)`.
pub fn provider_bindings(env: &HashMap<String, String>) -> Vec<ProviderBinding> {
    PROVIDERS
        .iter()
        .filter(|p| env.get(p.env_var).is_some_and(|v| !v.is_empty()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_set_variables_are_bound() {
        let env: HashMap<String, String> = [
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("GH_TOKEN", "ghp_x"),
            ("OPENAI_API_KEY", ""),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got = provider_bindings(&env);
        let names: Vec<_> = got.iter().map(|b| b.name).collect();
        assert_eq!(names, ["anthropic", "gh"]);
        assert_eq!(got[1].hosts, ["api.github.com", "github.com"]);
        assert!(provider_bindings(&HashMap::new()).is_empty());
    }
}
