//! Trust toward upstreams, and the CA bundle a session trusts.

use crate::{Alpn, SessionCa, TlsError};
use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The roots the proxy trusts toward real servers: the host's system store
/// (`rustls-native-certs`, which honours `SSL_CERT_FILE`/`SSL_CERT_DIR` and otherwise
/// finds the distribution's bundle) plus `tls.extra_roots`. The session CA is never
/// among them, so a minted leaf can never be mistaken for a real upstream.
///
/// Load once per session; [`UpstreamTrust::client_config`] builds each ALPN variant
/// once and then hands out clones of the same `Arc`.
pub struct UpstreamTrust {
    system: Vec<CertificateDer<'static>>,
    extra: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    configs: [OnceLock<Arc<ClientConfig>>; 4],
}

impl fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("system_roots", &self.system.len())
            .field("extra_roots", &self.extra.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamTrust {
    /// The system store plus every certificate in each `extra_roots` PEM file.
    ///
    /// An `extra_roots` file that cannot be read, or holds no certificate rustls can
    /// use, is an error naming the file (a typo must not silently drop a root). An
    /// empty system store is accepted only if `extra_roots` supplies at least one root.
    pub fn load(extra_roots: &[PathBuf]) -> Result<Self, TlsError> {
        let native = rustls_native_certs::load_native_certs();
        let detail = if native.errors.is_empty() {
            "no certificates found".to_string()
        } else {
            native
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        Self::from_parts(native.certs, extra_roots).map_err(|e| match e {
            TlsError::NoRoots { .. } => TlsError::NoRoots { detail },
            other => other,
        })
    }

    /// Like [`UpstreamTrust::load`] with an explicit system store (tests, or a host
    /// whose store Warden is told about some other way).
    pub fn from_parts(
        system: Vec<CertificateDer<'static>>,
        extra_roots: &[PathBuf],
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let system = dedup(system);
        // Distribution bundles carry the odd certificate webpki cannot parse; those
        // are skipped, as every rustls-based client does.
        roots.add_parsable_certificates(system.iter().cloned());
        let mut extra = Vec::new();
        for path in extra_roots {
            let certs = read_pem_certs(path)?;
            for cert in certs {
                roots.add(cert.clone()).map_err(|e| TlsError::ExtraRoot {
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
                extra.push(cert);
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots {
                detail: "no certificates found".to_string(),
            });
        }
        Ok(Self {
            system,
            extra: dedup(extra),
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            configs: Default::default(),
        })
    }

    /// A client config verifying upstream certificates (chain and name) against these
    /// roots, offering `alpn`.
    pub fn client_config(&self, alpn: Alpn) -> Result<Arc<ClientConfig>, TlsError> {
        let slot = &self.configs[alpn.index()];
        if let Some(config) = slot.get() {
            return Ok(config.clone());
        }
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.protocols();
        let config = Arc::new(config);
        Ok(slot.get_or_init(|| config).clone())
    }

    /// The system roots and extra roots as one PEM bundle (no session CA).
    pub fn pem_bundle(&self) -> String {
        let mut out = String::new();
        for cert in self.system.iter().chain(&self.extra) {
            push_pem(&mut out, cert);
        }
        out
    }

    /// The session's trust bundle: system roots, then the session CA, then the extra
    /// roots, deduplicated. Certificates only: it never contains a private key.
    pub fn session_bundle(&self, ca: &SessionCa) -> String {
        let mut out = String::new();
        let mut seen = HashSet::new();
        let certs = self
            .system
            .iter()
            .chain(std::iter::once(ca.cert_der()))
            .chain(&self.extra);
        for cert in certs {
            if seen.insert(cert.as_ref()) {
                push_pem(&mut out, cert);
            }
        }
        out
    }
}

impl SessionCa {
    /// The bundle the sandbox overlays at `/etc/ssl/certs/ca-certificates.crt` and
    /// that [`ca_env`] points clients at: the system roots, this session's CA and the
    /// extra roots. Convenience for [`UpstreamTrust::load`] + [`UpstreamTrust::session_bundle`].
    pub fn trust_bundle(&self, extra_roots: &[PathBuf]) -> Result<String, TlsError> {
        Ok(UpstreamTrust::load(extra_roots)?.session_bundle(self))
    }
}

/// The client config for upstream connections: system roots plus `extra_roots`, ALPN
/// `h2` and `http/1.1`. Loads the system store on every call; a proxy should keep an
/// [`UpstreamTrust`] instead.
pub fn upstream_client_config(extra_roots: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    UpstreamTrust::load(extra_roots)?.client_config(Alpn::H2AndHttp1)
}

/// Environment variables that make the usual clients trust `bundle_path` (the trust
/// bundle as seen inside the session). Set them in the session's environment next to
/// the overlaid system bundle, for clients that ship their own store (Python
/// `requests`/`certifi`, Node, pip, the AWS CLI, Deno) or read only a variable.
pub fn ca_env(bundle_path: &Path) -> Vec<(String, String)> {
    let path = bundle_path.display().to_string();
    [
        "SSL_CERT_FILE",       // OpenSSL, Python ssl, Go, rustls-native-certs, uv
        "REQUESTS_CA_BUNDLE",  // Python requests
        "CURL_CA_BUNDLE",      // curl, Python requests
        "NODE_EXTRA_CA_CERTS", // Node (added to its built-in store)
        "GIT_SSL_CAINFO",      // git
        "PIP_CERT",            // pip (it vendors certifi otherwise)
        "AWS_CA_BUNDLE",       // AWS CLI and SDKs
        "CARGO_HTTP_CAINFO",   // cargo
        "DENO_CERT",           // Deno
        "HTTPLIB2_CA_CERTS",   // httplib2 (Google API clients)
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", // gRPC core (C, Python, Ruby)
        "NIX_SSL_CERT_FILE",   // Nix-built programs
        "BUNDLE_SSL_CA_CERT",  // Ruby bundler
    ]
    .into_iter()
    .map(|name| (name.to_string(), path.clone()))
    .collect()
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::ExtraRoot {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".to_string()));
    }
    Ok(certs)
}

fn dedup(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    let mut seen = HashSet::new();
    certs
        .into_iter()
        .filter(|c| seen.insert(c.as_ref().to_vec()))
        .collect()
}

fn push_pem(out: &mut String, cert: &CertificateDer<'_>) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
}
