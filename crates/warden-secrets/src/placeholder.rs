//! Placeholders: what a credential's `env` variable holds inside the session instead
//! of the real value.
//!
//! Made fresh for each session, or, with this machine's [`PlaceholderKey`], the same in
//! every session for the same credential and value.
//!
//! A placeholder is shaped like the real value so client-side format checks pass, and
//! is otherwise random. Rules, in order:
//!
//! 1. A known vendor prefix (`sk-ant-api03-`, `ghp_`, `AKIA`, … see [`KNOWN_PREFIXES`])
//!    that the value starts with is kept verbatim (only when something follows it).
//! 2. **Strict shape**: same length; every upper-case letter, lower-case letter and
//!    digit is replaced by a random one of the same class (letters stay within `a-f` /
//!    `A-F` when the value looks hexadecimal); printable ASCII punctuation and spaces
//!    are kept where they are (they are token structure: `-`, `_`, `.`); any other
//!    byte becomes a random alphanumeric. Used when the random positions carry at
//!    least 128 bits.
//! 3. **Same length, one alphabet**: as 2, but every randomised position draws from
//!    the union of the classes the value uses (for hex: all 16 digits), which carries
//!    more entropy per character. Used when that reaches 128 bits.
//! 4. **Padded**: the value is too short to hide 128 bits in its own shape. The
//!    placeholder is the prefix followed by random characters of that alphabet, as many
//!    as needed for at least 32 characters and 128 bits; no punctuation of the real
//!    value is kept (for a short password it would be material, not structure).
//!
//! What a placeholder reveals about the real value: its prefix, its length (rules 2
//! and 3), which character classes it uses, and (rules 2 and 3) its punctuation and
//! where it sits — never anything else; in rules 2 and 3 the positions left unknown
//! carry at least 128 bits. A placeholder always differs from the real value, and
//! neither contains the other.

use crate::Secret;
use rand::{CryptoRng, Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use zeroize::Zeroizing;

/// Vendor prefixes kept verbatim at the start of a placeholder. The longest match wins.
pub const KNOWN_PREFIXES: &[&str] = &[
    "sk-ant-api03-",
    "sk-ant-admin01-",
    "sk-ant-oat01-",
    "sk-ant-",
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    "sk-or-v1-",
    "sk-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "ghr_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxe-",
    "xapp-",
    "AKIA",
    "ASIA",
    "AIza",
    "hf_",
    "npm_",
    "pypi-",
    "dop_v1_",
    "gsk_",
    "r8_",
    "pplx-",
];

/// Minimum entropy of a placeholder's random part, in bits.
const MIN_BITS: f64 = 128.0;

/// Minimum length of a padded placeholder.
const PADDED_LEN: usize = 32;

const DIGITS: &[u8] = b"0123456789";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER_HEX: &[u8] = b"abcdef";
const UPPER_HEX: &[u8] = b"ABCDEF";
const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A credential's placeholder for one session. Not secret (the agent holds it), so it
/// displays normally; [`Placeholder::for_secret`] makes one, [`Placeholder::adopt`]
/// takes over one made elsewhere for the same secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Placeholder(String);

impl fmt::Debug for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Placeholder({:?})", self.0)
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy)]
enum Class {
    Upper,
    Lower,
    Digit,
    /// Printable ASCII that is not alphanumeric: kept in rules 2 and 3.
    Punct(u8),
    /// Non-ASCII or control bytes: always randomised.
    Other,
}

impl Placeholder {
    /// Take over a placeholder another Warden process made for `secret` (the MCP
    /// gateway hands its placeholders to the sessions of the servers it starts, so one
    /// credential has one placeholder on both sides). Refused unless it is printable
    /// ASCII of at least 16 characters that neither contains nor is contained in the
    /// secret (so replacing one by the other cannot be confused).
    pub fn adopt(value: &str, secret: &Secret) -> Result<Self, String> {
        let real = secret.expose();
        if value.len() < 16 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a placeholder is at least 16 printable ASCII characters".into());
        }
        let v = value.as_bytes();
        let overlaps = |a: &[u8], b: &[u8]| !b.is_empty() && a.windows(b.len()).any(|w| w == b);
        if overlaps(v, real) || overlaps(real, v) {
            return Err("a placeholder cannot contain the real value or be part of it".into());
        }
        Ok(Placeholder(value.to_string()))
    }

    /// The placeholder of credential `name` holding `secret`: with `key`, the same for
    /// the same name and value in every session of this machine ([`PlaceholderKey`]);
    /// without, a fresh one ([`Placeholder::for_secret`]).
    pub fn for_credential(name: &str, secret: &Secret, key: Option<&PlaceholderKey>) -> Self {
        match key {
            Some(key) => key.placeholder(name, secret),
            None => Placeholder::for_secret(secret, &mut rand::rng()),
        }
    }

    /// A fresh random placeholder shaped like `secret` (see the module docs for the
    /// exact rules). `rng` must be a cryptographic generator (`rand::rng()`).
    pub fn for_secret<R: Rng + CryptoRng + ?Sized>(secret: &Secret, rng: &mut R) -> Self {
        let value = secret.expose();
        let prefix = KNOWN_PREFIXES
            .iter()
            .filter(|p| value.len() > p.len() && value.starts_with(p.as_bytes()))
            .max_by_key(|p| p.len())
            .map_or("", |p| *p);
        let body = &value[prefix.len()..];
        let classes: Vec<Class> = body.iter().map(|&b| classify(b)).collect();

        let has = |f: fn(&Class) -> bool| classes.iter().any(f);
        let has_upper = has(|c| matches!(c, Class::Upper));
        let has_lower = has(|c| matches!(c, Class::Lower));
        let has_digit = has(|c| matches!(c, Class::Digit));
        // Hex-looking: letters of one case only, all within a-f (or A-F).
        let lower_hex = !has_upper
            && body
                .iter()
                .filter(|b| b.is_ascii_lowercase())
                .all(|b| LOWER_HEX.contains(b));
        let upper_hex = !has_lower
            && body
                .iter()
                .filter(|b| b.is_ascii_uppercase())
                .all(|b| UPPER_HEX.contains(b));
        let lower: &[u8] = if lower_hex { LOWER_HEX } else { LOWER };
        let upper: &[u8] = if upper_hex { UPPER_HEX } else { UPPER };

        let mut union = Vec::new();
        if has_digit {
            union.extend_from_slice(DIGITS);
        }
        if has_lower {
            union.extend_from_slice(lower);
        }
        if has_upper {
            union.extend_from_slice(upper);
        }
        if union.len() < 2 {
            union = ALNUM.to_vec();
        }

        let strict = |c: &Class| -> Option<&[u8]> {
            match c {
                Class::Upper => Some(upper),
                Class::Lower => Some(lower),
                Class::Digit => Some(DIGITS),
                Class::Punct(_) => None,
                Class::Other => Some(&union),
            }
        };
        let strict_bits: f64 = classes
            .iter()
            .filter_map(strict)
            .map(|a| bits(a.len()))
            .sum();
        let random_positions = classes
            .iter()
            .filter(|c| !matches!(c, Class::Punct(_)))
            .count();
        let union_bits = random_positions as f64 * bits(union.len());

        loop {
            let mut out = String::with_capacity(value.len().max(PADDED_LEN));
            out.push_str(prefix);
            if strict_bits >= MIN_BITS {
                for c in &classes {
                    match strict(c) {
                        Some(alphabet) => out.push(pick(rng, alphabet)),
                        None => out.push(punct(c)),
                    }
                }
            } else if union_bits >= MIN_BITS {
                for c in &classes {
                    match c {
                        Class::Punct(_) => out.push(punct(c)),
                        _ => out.push(pick(rng, &union)),
                    }
                }
            } else {
                let mut random = 0usize;
                while out.len() < PADDED_LEN || (random as f64) * bits(union.len()) < MIN_BITS {
                    out.push(pick(rng, &union));
                    random += 1;
                }
            }
            let candidate = out.as_bytes();
            let overlaps = contains(candidate, value) || contains(value, candidate);
            if !overlaps {
                return Self(out);
            }
        }
    }

    /// The placeholder text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The placeholder bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a generated placeholder.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn classify(b: u8) -> Class {
    match b {
        b'A'..=b'Z' => Class::Upper,
        b'a'..=b'z' => Class::Lower,
        b'0'..=b'9' => Class::Digit,
        0x20..=0x7e => Class::Punct(b),
        _ => Class::Other,
    }
}

fn punct(c: &Class) -> char {
    match c {
        Class::Punct(b) => char::from(*b),
        _ => '-',
    }
}

fn bits(alphabet: usize) -> f64 {
    (alphabet as f64).log2()
}

fn pick<R: Rng + ?Sized>(rng: &mut R, alphabet: &[u8]) -> char {
    char::from(alphabet[rng.random_range(0..alphabet.len())])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// This machine's key for placeholders that stay the same from one session to the next.
///
/// A placeholder is [`Placeholder::for_secret`] drawn from ChaCha20 seeded with
/// HMAC-SHA256, under this key, of the credential's name and value. So the same
/// credential with the same value gets the same placeholder in every session on this
/// machine — an agent that remembers which API key its user approved (Claude Code keys
/// that on the key's last 20 characters) keeps working from one session to the next —
/// while the placeholder says nothing more about the value than a random one does to
/// anyone without the key. 32 random bytes in a file of its own (mode 0600, in Warden's
/// home, which no session sees), made at first use.
pub struct PlaceholderKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for PlaceholderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaceholderKey(..)")
    }
}

impl PlaceholderKey {
    /// The key's file name in Warden's home.
    pub const FILE: &'static str = "placeholder.key";

    /// Reads the key at `path`, or makes one there if there is none (two processes
    /// making it at once end up with the same key: the second one's link fails and it
    /// reads the first one's).
    pub fn load_or_create(path: &Path) -> io::Result<PlaceholderKey> {
        match PlaceholderKey::read(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => return r,
        }
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        let dir = path.parent().unwrap_or(Path::new("."));
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let temp = dir.join(format!(".{}.{}", PlaceholderKey::FILE, std::process::id()));
        let _ = std::fs::remove_file(&temp); // left by a process of the same id that died
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut f| f.write_all(key.as_ref()).and_then(|()| f.sync_all()));
        let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(PlaceholderKey(key)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => PlaceholderKey::read(path),
            Err(e) => Err(e),
        }
    }

    fn read(path: &Path) -> io::Result<PlaceholderKey> {
        let bytes = Zeroizing::new(std::fs::read(path)?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not a placeholder key (it must hold 32 bytes); remove it and a new one is made",
                    path.display()
                ),
            )
        })?;
        Ok(PlaceholderKey(Zeroizing::new(key)))
    }

    /// The placeholder of credential `name` holding `secret` (see the type's docs).
    pub fn placeholder(&self, name: &str, secret: &Secret) -> Placeholder {
        let name_len = (name.len() as u64).to_le_bytes();
        let seed = hmac_sha256(
            self.0.as_ref(),
            &[
                b"warden placeholder v1",
                &name_len,
                name.as_bytes(),
                secret.expose(),
            ],
        );
        Placeholder::for_secret(secret, &mut rand_chacha::ChaCha20Rng::from_seed(*seed))
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts` under `key` (at most 64 bytes).
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    debug_assert!(key.len() <= 64);
    let mut ipad = Zeroizing::new([0x36u8; 64]);
    let mut opad = Zeroizing::new([0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad.as_ref());
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(opad.as_ref());
    outer.update(inner.finalize());
    Zeroizing::new(outer.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(s: &[u8]) -> Vec<u8> {
        s.iter()
            .map(|b| match classify(*b) {
                Class::Upper => b'A',
                Class::Lower => b'a',
                Class::Digit => b'0',
                Class::Punct(p) => p,
                Class::Other => b'?',
            })
            .collect()
    }

    fn ph(value: &str) -> Placeholder {
        Placeholder::for_secret(&Secret::new(value.as_bytes().to_vec()), &mut rand::rng())
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let one = hmac_sha256(&[0x0b; 20], &[b"Hi ", b"There"]);
        assert_eq!(
            hex(one.as_ref()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let two = hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"]);
        assert_eq!(
            hex(two.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_keyed_placeholder_is_the_same_for_the_same_name_value_and_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home").join(PlaceholderKey::FILE);
        let key = PlaceholderKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let value = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijklmnop";
        let secret = Secret::new(value.as_bytes().to_vec());
        let p = key.placeholder("anthropic", &secret);
        assert!(p.as_str().starts_with("sk-ant-api03-") && p.as_str() != value);
        assert_eq!(p.as_str().len(), value.len());
        // The same key read again (another session): the same placeholder.
        let again = PlaceholderKey::load_or_create(&path).unwrap();
        assert_eq!(again.placeholder("anthropic", &secret), p);
        assert_eq!(
            Placeholder::for_credential("anthropic", &secret, Some(&again)),
            p
        );
        // Another name, another value, another machine's key, no key: another placeholder.
        assert_ne!(key.placeholder("anthropic-2", &secret), p);
        let other = Secret::new(value.replace('A', "B").into_bytes());
        assert_ne!(key.placeholder("anthropic", &other), p);
        let elsewhere = PlaceholderKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_ne!(elsewhere.placeholder("anthropic", &secret), p);
        assert_ne!(Placeholder::for_credential("anthropic", &secret, None), p);
        // Not a key: an error naming the file and the fix, never a silent new key.
        std::fs::write(&path, b"short").unwrap();
        let err = PlaceholderKey::load_or_create(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(PlaceholderKey::FILE) && err.contains("remove it"),
            "{err}"
        );
    }

    #[test]
    fn keeps_prefix_length_and_classes() {
        let cases = [
            "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_xyzAA",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghij",
            "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV0123456789abcdef",
            "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "AIzaSyAbCdEfGhIjKlMnOpQrStUvWxYz0123456",
            "glpat-AbCdEfGhIjKlMnOpQrStUvWxYzAbCd",
        ];
        for real in cases {
            let p = ph(real);
            let prefix = KNOWN_PREFIXES
                .iter()
                .filter(|k| real.starts_with(**k))
                .max_by_key(|k| k.len())
                .copied()
                .unwrap_or("");
            assert!(p.as_str().starts_with(prefix), "prefix lost for {prefix}");
            assert!(p.len() == real.len(), "length changed for {prefix}");
            assert!(
                shape(p.as_bytes()) == shape(real.as_bytes()),
                "classes changed for {prefix}"
            );
            assert!(p.as_str() != real);
        }
    }

    #[test]
    fn hex_values_stay_hex_and_same_length() {
        let real = "0123456789abcdef0123456789abcdef";
        let p = ph(real);
        assert!(p.len() == 32 && p.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert!(p.as_bytes().iter().all(|b| !b.is_ascii_uppercase()));
    }

    #[test]
    fn short_or_punctuation_heavy_values_are_padded_without_their_punctuation() {
        // A 20-character GitLab token carries under 128 bits in its own shape.
        for real in [
            "glpat-AbCdEfGhIjKlMnOpQrSt",
            "hunter2",
            "!@#$%^&*()",
            "correct horse battery staple",
            "sk-abc",
            "12345678",
        ] {
            let p = ph(real);
            assert!(p.len() >= 32, "not padded");
            let body = p
                .as_str()
                .trim_start_matches("sk-")
                .trim_start_matches("glpat-");
            assert!(
                body.bytes().all(|b| b.is_ascii_alphanumeric()),
                "punctuation leaked"
            );
            assert!(!p.as_str().contains(real));
        }
        assert!(ph("sk-abc").as_str().starts_with("sk-"));
    }

    #[test]
    fn binary_values_give_ascii_placeholders() {
        let real: Vec<u8> = (0u8..=255).collect();
        let p = Placeholder::for_secret(&Secret::new(real), &mut rand::rng());
        assert!(p.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)));
    }

    #[test]
    fn placeholders_are_fresh_each_time() {
        let real = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        assert!(ph(real) != ph(real));
    }

    #[test]
    fn adopted_placeholders_must_be_safe_stand_ins() {
        let secret = Secret::new(b"s3cr3t-command-value".to_vec());
        let ok = Placeholder::adopt("os9p1m1jb6gfw4rk99fiupdvxvsxnzx3", &secret).unwrap();
        assert_eq!(ok.as_str(), "os9p1m1jb6gfw4rk99fiupdvxvsxnzx3");
        for bad in [
            "short",
            "s3cr3t-command-value",
            "xx-s3cr3t-command-value-xx",
            "3cr3t-command-val",
            "has a space in it here",
            "tab\there-and-more-chars",
        ] {
            assert!(Placeholder::adopt(bad, &secret).is_err(), "{bad:?}");
        }
    }
}
