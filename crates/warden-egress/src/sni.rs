//! A total parser for the first bytes a client sends on a tunnel: is it a TLS
//! ClientHello, and which server name (SNI) does it ask for?
//!
//! Only what the domain-fronting check needs is read. Anything ambiguous — two
//! server_name extensions, two host_name entries, a name that is not ASCII — is
//! `Malformed` and denied rather than guessed at, because the upstream server might
//! read it differently from us.

/// Content type of a TLS handshake record.
const RECORD_HANDSHAKE: u8 = 0x16;
/// Handshake type ClientHello.
const CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;
const EXT_ECH: u16 = 0xfe0d;
/// The most a ClientHello may span before we stop buffering (post-quantum key
/// shares make them a few KiB; 64 KiB is far beyond any real one).
pub const MAX_HELLO: usize = 64 * 1024;

/// What the first bytes of a stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// Not TLS (SSH, plain HTTP, anything else).
    NotTls,
    /// A complete ClientHello.
    ClientHello {
        /// The server_name, as sent (not yet canonicalized).
        sni: Option<String>,
        /// The hello carries an encrypted_client_hello extension (real or GREASE).
        ech: bool,
        /// The application protocols offered (ALPN), in the client's order; empty
        /// when the extension is absent.
        alpn: Vec<Vec<u8>>,
    },
    /// A TLS handshake that does not parse the one unambiguous way.
    Malformed(&'static str),
}

/// Classify `buf`, the bytes a client sent so far.
pub fn parse(buf: &[u8]) -> Hello {
    let Some(&first) = buf.first() else {
        return Hello::NeedMore;
    };
    if first != RECORD_HANDSHAKE {
        return Hello::NotTls;
    }
    // Gather the handshake bytes of consecutive handshake records.
    let mut hs = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Hello::NeedMore;
        }
        if rest[0] != RECORD_HANDSHAKE {
            return Hello::Malformed("ClientHello interleaved with another record type");
        }
        if rest[1] != 0x03 {
            return if hs.is_empty() {
                Hello::NotTls
            } else {
                Hello::Malformed("bad record version")
            };
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Hello::Malformed("empty handshake record");
        }
        let Some(body) = rest.get(5..5 + len) else {
            return Hello::NeedMore;
        };
        hs.extend_from_slice(body);
        rest = &rest[5 + len..];
        if hs.len() >= 4 {
            if hs[0] != CLIENT_HELLO {
                return Hello::Malformed("first handshake message is not a ClientHello");
            }
            let msg_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if msg_len > MAX_HELLO {
                return Hello::Malformed("ClientHello too large");
            }
            if hs.len() >= 4 + msg_len {
                return parse_client_hello(&hs[4..4 + msg_len]);
            }
        }
        if hs.len() > MAX_HELLO {
            return Hello::Malformed("ClientHello too large");
        }
    }
}

/// A cursor over untrusted bytes; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn parse_client_hello(body: &[u8]) -> Hello {
    match parse_client_hello_inner(body) {
        Ok(h) => h,
        Err(why) => Hello::Malformed(why),
    }
}

fn parse_client_hello_inner(body: &[u8]) -> Result<Hello, &'static str> {
    let mut r = Reader(body);
    r.take(2 + 32).ok_or("truncated ClientHello")?; // version, random
    r.vec8().ok_or("truncated session id")?;
    r.vec16().ok_or("truncated cipher suites")?;
    r.vec8().ok_or("truncated compression methods")?;
    if r.0.is_empty() {
        return Ok(Hello::ClientHello {
            sni: None,
            ech: false,
            alpn: Vec::new(),
        });
    }
    let mut exts = Reader(r.vec16().ok_or("truncated extensions")?);
    if !r.0.is_empty() {
        return Err("trailing bytes after extensions");
    }
    let mut sni = None;
    let mut seen_sni = false;
    let mut ech = false;
    let mut alpn = None;
    while !exts.0.is_empty() {
        let ty = exts.u16().ok_or("truncated extension")?;
        let data = exts.vec16().ok_or("truncated extension")?;
        match ty {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err("two server_name extensions");
                }
                seen_sni = true;
                sni = parse_server_name(data)?;
            }
            EXT_ECH => ech = true,
            EXT_ALPN => {
                if alpn.is_some() {
                    return Err("two ALPN extensions");
                }
                alpn = Some(parse_alpn(data)?);
            }
            _ => {}
        }
    }
    Ok(Hello::ClientHello {
        sni,
        ech,
        alpn: alpn.unwrap_or_default(),
    })
}

fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16().ok_or("truncated ALPN list")?);
    if !r.0.is_empty() {
        return Err("trailing bytes in ALPN");
    }
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let p = list.vec8().ok_or("truncated ALPN protocol")?;
        if p.is_empty() {
            return Err("empty ALPN protocol");
        }
        out.push(p.to_vec());
    }
    Ok(out)
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16().ok_or("truncated server_name list")?);
    if !r.0.is_empty() {
        return Err("trailing bytes in server_name");
    }
    let mut name = None;
    while !list.0.is_empty() {
        let ty = list.u8().ok_or("truncated server_name entry")?;
        let value = list.vec16().ok_or("truncated server_name entry")?;
        if ty != 0 {
            continue;
        }
        if name.is_some() {
            return Err("two host_name entries");
        }
        if value.is_empty() || !value.iter().all(|b| b.is_ascii_graphic()) {
            return Err("server name is not printable ASCII");
        }
        name = Some(String::from_utf8_lossy(value).into_owned());
    }
    Ok(name)
}

/// Test and fuzz helper: a minimal ClientHello with the given SNI, split into records
/// of at most `record_len` handshake bytes.
pub fn build_client_hello(sni: Option<&str>, record_len: usize) -> Vec<u8> {
    build_client_hello_alpn(sni, &[], record_len)
}

/// [`build_client_hello`] with an ALPN extension offering `alpn` (none when empty).
pub fn build_client_hello_alpn(sni: Option<&str>, alpn: &[&[u8]], record_len: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        exts.extend_from_slice(&EXT_ALPN.to_be_bytes());
        exts.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
    }
    if let Some(name) = sni {
        let name = name.as_bytes();
        let mut entry = vec![0u8];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&entry);
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![CLIENT_HELLO];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in hs.chunks(record_len.max(1)) {
        out.extend_from_slice(&[RECORD_HANDSHAKE, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sni_in_one_or_many_records() {
        for record_len in [1, 7, 50, 16_000] {
            let hello = build_client_hello(Some("api.example.com"), record_len);
            assert_eq!(
                parse(&hello),
                Hello::ClientHello {
                    sni: Some("api.example.com".into()),
                    ech: false,
                    alpn: Vec::new(),
                }
            );
            // Every strict prefix needs more bytes; never a wrong answer.
            for cut in 1..hello.len() {
                assert_eq!(parse(&hello[..cut]), Hello::NeedMore, "cut {cut}");
            }
        }
    }

    #[test]
    fn no_sni_and_not_tls() {
        let hello = build_client_hello(None, 100);
        assert_eq!(
            parse(&hello),
            Hello::ClientHello {
                sni: None,
                ech: false,
                alpn: Vec::new(),
            }
        );
        let hello = build_client_hello_alpn(Some("a.test"), &[b"h2", b"http/1.1"], 30);
        assert_eq!(
            parse(&hello),
            Hello::ClientHello {
                sni: Some("a.test".into()),
                ech: false,
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            }
        );
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.6\r\n"), Hello::NotTls);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(b""), Hello::NeedMore);
    }

    #[test]
    fn rejects_ambiguity() {
        assert!(matches!(
            parse(&build_client_hello(Some("a\0b.com"), 100)),
            Hello::Malformed(_)
        ));
        // Garbage after a valid header never panics.
        for seed in 0..2000u32 {
            let mut bytes = build_client_hello(Some("x.test"), 40);
            let i = (seed as usize * 7919) % bytes.len();
            bytes[i] ^= (seed % 255 + 1) as u8;
            bytes.truncate(bytes.len() - (seed as usize % 5));
            let _ = parse(&bytes);
        }
    }
}
