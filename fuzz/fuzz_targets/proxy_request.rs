//! The explicit proxy's request handling (hyper's HTTP/1.1 parser, then Warden's
//! target, Host and CONNECT handling) on arbitrary client bytes over an in-memory
//! stream: never panics or hangs, answers in HTTP/1.x, and never resolves (so never
//! dials) a name the policy does not allow.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_fuzz::{could_allow, harness};

fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.tick();
    let out = h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let peer = "127.0.0.1:40000".parse().expect("peer address");
        let task = tokio::spawn(warden_egress::fuzzing::serve_proxy_io(
            h.egress.clone(),
            server,
            peer,
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
            .await
            .expect("the proxy answers and closes within 5 s")
            .ok();
        task.abort();
        out
    });
    if !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1."),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }
    for name in h.asked() {
        assert!(could_allow(&name), "resolved {name:?}");
    }
});
