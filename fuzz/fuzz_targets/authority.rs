//! `parse_authority` (CONNECT targets, absolute-URI authorities, Host headers) on
//! arbitrary text: never panics, and what it accepts is canonical and re-parses to
//! itself from its printed form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warden_egress::parse_authority;
use warden_policy::host::canonical_host;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for default in [None, Some(80)] {
        let Ok(t) = parse_authority(s, default) else {
            continue;
        };
        assert_ne!(t.port, 0);
        let shown = t.to_string();
        assert_eq!(
            parse_authority(&shown, None).as_ref(),
            Ok(&t),
            "{s:?} -> {shown:?}"
        );
        if let Some(n) = t.name() {
            assert_eq!(canonical_host(n).as_deref(), Ok(n), "{s:?}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b)),
                "{s:?} -> {n:?}"
            );
        }
    }
});
