//! The DNS front end (`warden_egress::dns_answer`) on arbitrary datagrams: never
//! panics, answers parse and echo the query id, and only a name the policy could
//! allow ever gets an address, always a synthetic one.
#![no_main]
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use libfuzzer_sys::fuzz_target;
use warden_fuzz::{could_allow, harness};
use warden_policy::host::canonical_host;

fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.tick();
    let Some(resp) =
        h.rt.block_on(warden_egress::dns_answer(&h.egress, data, None))
    else {
        return;
    };
    assert!(data.len() >= 2);
    let msg = Message::from_vec(&resp).expect("our own response parses");
    assert_eq!(msg.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    assert_eq!(msg.metadata.message_type, MessageType::Response);
    if msg.answers.is_empty() {
        return;
    }
    let [q] = msg.queries.as_slice() else {
        panic!("answers without exactly one question: {msg:?}");
    };
    let name = canonical_host(&q.name().to_ascii()).expect("an answered name is valid");
    assert!(could_allow(&name), "{name} answered");
    for a in &msg.answers {
        match &a.data {
            RData::A(v4) => assert_eq!(v4.0.octets()[..1], [198]),
            RData::AAAA(v6) => assert_eq!(v6.0.segments()[..3], [0xfd7a, 0x7761, 0x7264]),
            other => panic!("answered {other:?}"),
        }
    }
    assert!(h.asked().is_empty(), "the DNS front end resolved a name");
});
