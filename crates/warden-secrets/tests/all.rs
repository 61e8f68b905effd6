//! Scanning and rewriting through the public API, with property tests. Assertions
//! are booleans: a failing test never prints a value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use rand::SeedableRng;
use std::sync::Arc;
use warden_secrets::{
    Credential, Form, Placeholder, Secret, SecretSet, StreamGuard, StreamRewriter, StreamScanner,
    Which,
};

const GH_HOSTS: &[&str] = &["api.github.com"];

fn placeholder_for(real: &[u8], seed: u64) -> Placeholder {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Placeholder::for_secret(&Secret::new(real.to_vec()), &mut rng)
}

fn set_with(real: &[u8], seed: u64) -> (SecretSet, Placeholder) {
    let placeholder = placeholder_for(real, seed);
    let set = SecretSet::new(vec![Credential {
        name: "c".to_string(),
        real: Secret::new(real.to_vec()),
        placeholder: placeholder.clone(),
        hosts: GH_HOSTS.iter().map(|h| h.to_string()).collect(),
    }]);
    match set {
        Ok(set) => (set, placeholder),
        Err(_) => panic!("set should build"),
    }
}

fn two_sets() -> (SecretSet, Placeholder, Placeholder) {
    let gh = placeholder_for(b"ghp_RealGithubToken0123456789abcdefABCD", 1);
    let ant = placeholder_for(
        b"sk-ant-api03-RealAnthropicKey_0123456789-abcdefghijklmnop",
        2,
    );
    let set = SecretSet::new(vec![
        Credential {
            name: "github".into(),
            real: Secret::new(b"ghp_RealGithubToken0123456789abcdefABCD".to_vec()),
            placeholder: gh.clone(),
            hosts: vec!["api.github.com".into(), "github.com".into()],
        },
        Credential {
            name: "anthropic".into(),
            real: Secret::new(
                b"sk-ant-api03-RealAnthropicKey_0123456789-abcdefghijklmnop".to_vec(),
            ),
            placeholder: ant.clone(),
            hosts: vec!["api.anthropic.com".into()],
        },
    ]);
    match set {
        Ok(set) => (set, gh, ant),
        Err(_) => panic!("set should build"),
    }
}

fn pct_all(v: &[u8]) -> Vec<u8> {
    v.iter()
        .flat_map(|b| format!("%{b:02X}").into_bytes())
        .collect()
}

fn pct_rfc3986_lower(v: &[u8]) -> Vec<u8> {
    v.iter()
        .flat_map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                vec![b]
            } else {
                format!("%{b:02x}").into_bytes()
            }
        })
        .collect()
}

fn form_encode(v: &[u8]) -> Vec<u8> {
    v.iter()
        .flat_map(|&b| {
            if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
                vec![b]
            } else if b == b' ' {
                vec![b'+']
            } else {
                format!("%{b:02X}").into_bytes()
            }
        })
        .collect()
}

fn hex_upper(v: &[u8]) -> Vec<u8> {
    v.iter()
        .flat_map(|b| format!("{b:02X}").into_bytes())
        .collect()
}

fn hex_lower(v: &[u8]) -> Vec<u8> {
    v.iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect()
}

/// The value embedded in random bytes, in encoding `form`.
fn embed(form: u8, prefix: &[u8], value: &[u8], suffix: &[u8]) -> Vec<u8> {
    let around = |mid: Vec<u8>| [prefix, &mid, suffix].concat();
    match form % 10 {
        0 => around(value.to_vec()),
        1 => around(pct_all(value)),
        2 => around(pct_rfc3986_lower(value)),
        3 => around(form_encode(value)),
        4 => around(hex_lower(value)),
        5 => around(hex_upper(value)),
        // Base64 of the whole blob: the value sits at any alignment inside it.
        6 => STANDARD
            .encode([prefix, value, suffix].concat())
            .into_bytes(),
        7 => STANDARD_NO_PAD
            .encode([prefix, value, suffix].concat())
            .into_bytes(),
        8 => URL_SAFE
            .encode([prefix, value, suffix].concat())
            .into_bytes(),
        _ => URL_SAFE_NO_PAD
            .encode([prefix, value, suffix].concat())
            .into_bytes(),
    }
}

fn split_feed_scan(scanner: &mut StreamScanner, data: &[u8], cuts: &[usize]) -> bool {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut last = 0;
    let mut found = false;
    for p in points.into_iter().chain([data.len()]) {
        found |= scanner.feed(&data[last..p]).is_some();
        last = p;
    }
    found
}

fn split_rewrite(rw: &mut StreamRewriter, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([data.len()]) {
        rw.feed(&data[last..p], &mut out);
        last = p;
    }
    rw.finish(&mut out);
    out
}

fn secret_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Token-like printable values.
        proptest::collection::vec(proptest::char::range('!', '~'), 8..60)
            .prop_map(|cs| cs.into_iter().collect::<String>().into_bytes()),
        // Arbitrary bytes.
        proptest::collection::vec(any::<u8>(), 8..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_value_embedded_in_any_form_is_found(
        secret in secret_strategy(),
        prefix in proptest::collection::vec(any::<u8>(), 0..40),
        suffix in proptest::collection::vec(any::<u8>(), 0..40),
        form in 0u8..10,
        placeholder_side in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (set, placeholder) = set_with(&secret, seed);
        let value = if placeholder_side { placeholder.as_bytes().to_vec() } else { secret.clone() };
        let hay = embed(form, &prefix, &value, &suffix);
        let found = set.find(&hay);
        prop_assert!(found.is_some(), "form {} not found", form);
        let which = if placeholder_side { Which::Placeholder } else { Which::Real };
        prop_assert!(set.detector_all().find_iter(&hay).any(|f| f.which == which && &*f.credential == "c"));
    }

    #[test]
    fn a_value_split_across_chunks_is_found_and_replaced(
        secret in secret_strategy(),
        prefix in proptest::collection::vec(any::<u8>(), 0..40),
        suffix in proptest::collection::vec(any::<u8>(), 0..40),
        form in 0u8..10,
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        seed in any::<u64>(),
    ) {
        let (set, _) = set_with(&secret, seed);
        let hay = embed(form, &prefix, &secret, &suffix);
        let mut scanner = StreamScanner::new(Arc::new(set.guard_for(|_, _| false).map_err(|e| TestCaseError::fail(e.to_string()))?));
        prop_assert!(split_feed_scan(&mut scanner, &hay, &cuts));

        // Streaming equals one-shot, and no real value survives scrubbing.
        let scrub = Arc::new(set.scrubber().map_err(|e| TestCaseError::fail(e.to_string()))?);
        let streamed = split_rewrite(&mut StreamRewriter::new(scrub.clone()), &hay, &cuts);
        let oneshot = scrub.apply(&hay).map(|r| r.bytes.to_vec()).unwrap_or_else(|| hay.clone());
        prop_assert!(streamed == oneshot, "streamed and one-shot rewrites differ");
        prop_assert!(!set.detector_all().find_iter(&streamed).any(|f| f.which == Which::Real), "a real value survived scrubbing");

        // The guard stops before releasing any byte of the value.
        let mut guard = StreamGuard::new(Arc::new(set.guard_for(|_, _| false).map_err(|e| TestCaseError::fail(e.to_string()))?));
        let mut released = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (hay.len() + 1)).collect();
        points.sort_unstable();
        let mut last = 0;
        let mut blocked = None;
        for p in points.into_iter().chain([hay.len()]) {
            if let Err(f) = guard.feed(&hay[last..p], &mut released) { blocked = Some(f); break; }
            last = p;
        }
        if blocked.is_none() {
            blocked = guard.finish(&mut released).err();
        }
        let blocked = blocked.ok_or_else(|| TestCaseError::fail("guard let the value through"))?;
        prop_assert!(released.len() <= blocked.start, "bytes of the value were released");
    }

    #[test]
    fn rewriting_is_the_identity_without_needles(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        seed in any::<u64>(),
    ) {
        let (set, _) = set_with(b"sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", seed);
        prop_assume!(set.find(&data).is_none());
        for rw in [set.scrubber(), set.injector_for(|_, _| true)] {
            let rw = Arc::new(rw.map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert!(rw.apply(&data).is_none());
            let out = split_rewrite(&mut StreamRewriter::new(rw), &data, &cuts);
            prop_assert!(out == data);
        }
    }

    #[test]
    fn injection_then_scrubbing_round_trips(
        secret in secret_strategy(),
        prefix in proptest::collection::vec(any::<u8>(), 0..40),
        suffix in proptest::collection::vec(any::<u8>(), 0..40),
        form in 0u8..6,
        seed in any::<u64>(),
    ) {
        let (set, placeholder) = set_with(&secret, seed);
        let sent = embed(form, &prefix, placeholder.as_bytes(), &suffix);
        let injected = set.injector_for(|_, _| true).map_err(|e| TestCaseError::fail(e.to_string()))?
            .apply(&sent).ok_or_else(|| TestCaseError::fail("placeholder not injected"))?;
        // The form is kept whenever it is recognisable: a padded placeholder (short
        // value) or one standing in for non-printable bytes may encode the same in
        // several forms, and then the first (raw) wins.
        let same_shape = placeholder.len() == secret.len()
            && secret.iter().zip(placeholder.as_bytes()).all(|(s, p)| {
                (0x20..0x7f).contains(s) && (s.is_ascii_alphanumeric() == p.is_ascii_alphanumeric()) && (s.is_ascii_alphanumeric() || s == p)
            });
        if same_shape {
            prop_assert!(injected.bytes.as_slice() == embed(form, &prefix, &secret, &suffix).as_slice(), "injection did not keep the form");
        }
        let back = set.scrubber().map_err(|e| TestCaseError::fail(e.to_string()))?
            .apply(&injected.bytes).ok_or_else(|| TestCaseError::fail("real value not scrubbed"))?;
        // Where one encoding of a value coincides with another, the first form's
        // counterpart is used: the bytes may differ, the decoded text does not.
        if same_shape {
            prop_assert!(back.bytes.as_slice() == sent.as_slice());
        }
        prop_assert!(!set.detector_all().find_iter(&back.bytes).any(|f| f.which == Which::Real));
    }
}

#[test]
fn the_guard_for_a_host_ignores_its_own_credentials_only() -> Result<(), Box<dyn std::error::Error>>
{
    let (set, gh, ant) = two_sets();
    let bound_to =
        |host: &'static str| move |_: &str, hosts: &[String]| hosts.iter().any(|h| h == host);
    let guard = set.guard_for(bound_to("api.github.com"))?;
    assert!(
        guard.find(gh.as_bytes()).is_none(),
        "github's placeholder is fine toward github"
    );
    let hit = guard.find(format!("x-api-key: {ant}").as_bytes());
    assert!(hit.is_some_and(|f| &*f.credential == "anthropic" && f.which == Which::Placeholder));
    let hit = guard
        .find(hex_lower(b"sk-ant-api03-RealAnthropicKey_0123456789-abcdefghijklmnop").as_slice());
    assert!(hit.is_some_and(|f| f.form == Form::Hex && f.which == Which::Real));
    // Toward an unrelated host, both are blocked.
    let guard = set.guard_for(bound_to("evil.example"))?;
    assert!(guard.find(gh.as_bytes()).is_some() && guard.find(ant.as_bytes()).is_some());
    Ok(())
}

#[test]
fn find_decoded_catches_mixed_percent_encoding() {
    let (set, gh, _) = two_sets();
    let mut mixed = Vec::new();
    for (i, b) in gh.as_bytes().iter().enumerate() {
        if i % 2 == 0 {
            mixed.extend_from_slice(format!("%{b:02x}").as_bytes());
        } else {
            mixed.push(*b);
        }
    }
    let url = [b"/search?q=".as_slice(), &mixed].concat();
    assert!(
        set.find(&url).is_none(),
        "the byte automaton does not cover mixtures"
    );
    assert!(
        set.detector_all()
            .find_decoded(&url)
            .is_some_and(|f| f.form == Form::Url)
    );
}

#[test]
fn basic_auth_is_decoded_rewritten_and_reencoded() -> Result<(), Box<dyn std::error::Error>> {
    let (set, gh, _) = two_sets();
    let inject = set.injector_for(|name, _| name == "github")?;
    for user in ["x-access-token", "u", "ab"] {
        let header = format!("Basic {}", STANDARD.encode(format!("{user}:{gh}")));
        let out = inject
            .header_value(header.as_bytes())?
            .ok_or("not rewritten")?;
        let encoded = out.bytes.strip_prefix(b"Basic ").ok_or("scheme lost")?;
        let decoded = STANDARD.decode(encoded)?;
        assert!(decoded == format!("{user}:ghp_RealGithubToken0123456789abcdefABCD").into_bytes());
        assert!(out.credentials.iter().any(|c| &**c == "github"));
    }
    let bearer = format!("Bearer {gh}");
    let out = inject
        .header_value(bearer.as_bytes())?
        .ok_or("bearer not rewritten")?;
    assert!(out.bytes.as_slice() == b"Bearer ghp_RealGithubToken0123456789abcdefABCD");
    // The app's own credentials for other services are left exactly as they are.
    for untouched in [
        "Bearer sk-live-someone-elses-token",
        "Basic dXNlcjpwYXNz",
        "token abc",
    ] {
        assert!(inject.header_value(untouched.as_bytes())?.is_none());
    }
    Ok(())
}

#[test]
fn header_injection_refuses_line_breaks() -> Result<(), Box<dyn std::error::Error>> {
    let real = b"evil-value\r\nX-Injected: 1".to_vec();
    let placeholder = placeholder_for(&real, 7);
    let set = SecretSet::new(vec![Credential {
        name: "crlf".into(),
        real: Secret::new(real),
        placeholder: placeholder.clone(),
        hosts: vec![],
    }])?;
    let inject = set.injector_for(|_, _| true)?;
    assert!(inject.header_value(placeholder.as_bytes()).is_err());
    let fmt = warden_secrets::scan::render_header(
        "crlf",
        Some("Bearer {secret}"),
        &Secret::new(b"a\nb".to_vec()),
    );
    assert!(fmt.is_err());
    let ok = warden_secrets::scan::render_header(
        "ok",
        Some("Bearer {secret}"),
        &Secret::new(b"tok-12345".to_vec()),
    )?;
    assert!(ok.as_slice() == b"Bearer tok-12345");
    assert!(
        warden_secrets::scan::render_header("x", Some("no marker"), &Secret::new(b"v".to_vec()))
            .is_err()
    );
    Ok(())
}

#[test]
fn streams_release_at_once_what_cannot_start_a_needle() -> Result<(), Box<dyn std::error::Error>> {
    let (set, gh, _) = two_sets();
    let mut rw = StreamRewriter::new(Arc::new(set.scrubber()?));
    let mut out = Vec::new();
    // A server-sent event is released whole, immediately.
    rw.feed(b"event: delta\ndata: {\"text\":\"hello\"}\n\n", &mut out);
    assert!(out.as_slice() == b"event: delta\ndata: {\"text\":\"hello\"}\n\n" && rw.held() == 0);
    // Only the part that may begin a real value is held.
    out.clear();
    rw.feed(b"data: ghp_RealGith", &mut out);
    assert!(out.as_slice() == b"data: " && rw.held() == "ghp_RealGith".len());
    rw.feed(b"ubToken0123456789abcdefABCD\n\n", &mut out);
    let expected = format!("data: {gh}\n\n");
    assert!(out.as_slice() == expected.as_bytes() && rw.held() == 0);
    assert!(rw.credentials_used().iter().any(|c| &**c == "github"));
    Ok(())
}

#[test]
fn short_values_and_duplicate_names_are_refused() {
    let p = placeholder_for(b"short", 1);
    let short = SecretSet::new(vec![Credential {
        name: "s".into(),
        real: Secret::new(b"short".to_vec()),
        placeholder: p.clone(),
        hosts: vec![],
    }]);
    let msg = short.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("\"s\"") && !msg.contains("short\""));
    let dup = SecretSet::new(vec![
        Credential {
            name: "d".into(),
            real: Secret::new(b"value-one-1".to_vec()),
            placeholder: p.clone(),
            hosts: vec![],
        },
        Credential {
            name: "d".into(),
            real: Secret::new(b"value-two-2".to_vec()),
            placeholder: p,
            hosts: vec![],
        },
    ]);
    assert!(dup.is_err());
}

#[test]
fn debug_output_never_contains_values() {
    let (set, _, _) = two_sets();
    let shown = format!(
        "{set:?} {:?} {:?}",
        set.scrubber().ok(),
        set.injector_for(|_, _| true).ok()
    );
    assert!(!shown.contains("RealGithubToken") && !shown.contains("RealAnthropicKey"));
}

#[test]
fn two_credentials_with_the_same_real_value_both_work() -> Result<(), Box<dyn std::error::Error>> {
    // GH_TOKEN and GITHUB_TOKEN often hold the same token.
    let real = b"ghp_SameTokenInBothVariables0123456789ab".to_vec();
    let (p1, p2) = (placeholder_for(&real, 1), placeholder_for(&real, 2));
    let hosts = vec!["api.github.com".to_string()];
    let set = SecretSet::new(vec![
        Credential {
            name: "gh".into(),
            real: Secret::new(real.clone()),
            placeholder: p1.clone(),
            hosts: hosts.clone(),
        },
        Credential {
            name: "github".into(),
            real: Secret::new(real.clone()),
            placeholder: p2.clone(),
            hosts,
        },
    ])?;
    assert!(set.placeholder("gh") == Some(&p1) && set.placeholder("github") == Some(&p2));
    let inject = set.injector_for(|_, _| true)?;
    for p in [&p1, &p2] {
        let out = inject.apply(p.as_bytes()).ok_or("not injected")?;
        assert!(out.bytes.as_slice() == real.as_slice());
    }
    let scrubbed = set.scrubber()?.apply(&real).ok_or("not scrubbed")?;
    assert!(scrubbed.bytes.as_slice() == p1.as_bytes());
    Ok(())
}

#[test]
fn base64_then_percent_encoded_values_are_found_decoded() {
    let (set, _, ant) = two_sets();
    let b64 = STANDARD.encode(format!("k={ant}&x=1"));
    let escaped = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let body = format!("payload={escaped}");
    assert!(
        set.detector_all()
            .find_decoded(body.as_bytes())
            .is_some_and(|f| &*f.credential == "anthropic")
    );
}
