//! The ClientHello / SNI classifier (`warden_egress::sni::parse`) on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warden_egress::sni::{Hello, build_client_hello, parse};

fuzz_target!(|data: &[u8]| {
    let r = parse(data);
    if let Hello::ClientHello { sni: Some(s), .. } = &r {
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()),
            "{s:?}"
        );
    }
    if r != Hello::NeedMore {
        // Decided on what was read: bytes after it never change the answer ...
        let mut more = data.to_vec();
        more.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x01, 0xff]);
        assert_eq!(parse(&more), r, "appending changed the verdict");
        // ... and a shorter prefix is either undecided or decided the same way.
        for cut in [data.len() / 2, data.len() - 1] {
            let p = parse(&data[..cut]);
            assert!(
                p == Hello::NeedMore || p == r,
                "prefix {cut}: {p:?} vs {r:?}"
            );
        }
    }
    // The bytes as a server name, in a well-formed hello split into records.
    if data.len() <= 512 {
        if let Ok(name) = std::str::from_utf8(data) {
            let printable = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
            for record_len in [1, 13, 16_384] {
                let p = parse(&build_client_hello(Some(name), record_len));
                if printable {
                    let want = Hello::ClientHello {
                        sni: Some(name.to_string()),
                        ech: false,
                        alpn: Vec::new(),
                    };
                    assert_eq!(p, want);
                } else {
                    assert!(matches!(p, Hello::Malformed(_)), "{name:?}: {p:?}");
                }
            }
        }
    }
});
