//! The name a guest's connection is for: the TLS ClientHello's
//! server_name, or an HTTP request's Host. Guest bytes are untrusted; this
//! only reads, never trusts a length past what arrived, and gives up with
//! [`Sniffed::Unnamed`] on anything it does not understand (fuzzed:
//! `fuzz/fuzz_targets/sniff_name.rs`).
//!
//! The TLS part is written by hand: the one extension needed sits at a
//! fixed path of a fixed structure (RFC 8446 4.1.2, RFC 6066 3), and the
//! TLS parsing crates parse and allocate the whole handshake to get there.
//! HTTP uses httparse.

/// The most bytes read from a guest connection before giving up on a name
/// (a ClientHello with many extensions is a few KiB; post-quantum key
/// shares make it larger).
pub const MAX_SNIFF: usize = 16 * 1024;

/// What the first bytes of a connection say about its destination name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// More bytes are needed to tell.
    NeedMore,
    /// The name it asks for (lower case, no final dot, no port).
    Named(String),
    /// It is not TLS or HTTP, or names nothing.
    Unnamed,
}

/// Looks at the first bytes of a connection.
pub fn sniff(data: &[u8]) -> Sniffed {
    match data.first() {
        None => Sniffed::NeedMore,
        Some(0x16) => tls_server_name(data),
        Some(b) if b.is_ascii_uppercase() => http_host(data),
        Some(_) => Sniffed::Unnamed,
    }
}

fn clean_name(name: &[u8]) -> Sniffed {
    let Ok(name) = std::str::from_utf8(name) else {
        return Sniffed::Unnamed;
    };
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Sniffed::Unnamed;
    }
    Sniffed::Named(name)
}

fn http_host(data: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(data) {
        Ok(httparse::Status::Partial) if data.len() < MAX_SNIFF => {
            // httparse fills headers as it goes; a Host already complete
            // is not enough (a later one could follow): wait for the end.
            Sniffed::NeedMore
        }
        Ok(httparse::Status::Complete(_)) => {
            let mut hosts = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            let (Some(host), None) = (hosts.next(), hosts.next()) else {
                // None, or two (which one would the server use?).
                return Sniffed::Unnamed;
            };
            let value = host.value;
            // Drop a port; an IPv6 literal names no domain.
            if value.first() == Some(&b'[') {
                return Sniffed::Unnamed;
            }
            let name = match value.iter().rposition(|&b| b == b':') {
                Some(i) => &value[..i],
                None => value,
            };
            clean_name(name)
        }
        _ => Sniffed::Unnamed,
    }
}

/// A cursor over untrusted bytes: every read is checked.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn tls_server_name(data: &[u8]) -> Sniffed {
    // The handshake message may span several records: join their bodies.
    let mut handshake = Vec::new();
    let mut records = Reader { data };
    let body = loop {
        let Some(header) = records.take(5) else {
            return need_more(data);
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return Sniffed::Unnamed;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 256 {
            return Sniffed::Unnamed;
        }
        let Some(fragment) = records.take(len) else {
            return need_more(data);
        };
        handshake.extend_from_slice(fragment);
        if handshake.len() >= 4 {
            let declared = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if handshake.len() >= 4 + declared {
                break handshake;
            }
        }
    };
    client_hello_sni(&body).map_or(Sniffed::Unnamed, clean_name)
}

fn need_more(data: &[u8]) -> Sniffed {
    if data.len() >= MAX_SNIFF {
        Sniffed::Unnamed
    } else {
        Sniffed::NeedMore
    }
}

/// The host_name of the server_name extension of a ClientHello message.
fn client_hello_sni(message: &[u8]) -> Option<&[u8]> {
    let mut r = Reader { data: message };
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut r = Reader { data: r.take(len)? };
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut extensions = Reader { data: r.vec16()? };
    while !extensions.data.is_empty() {
        let kind = extensions.u16()?;
        let body = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader {
            data: Reader { data: body }.vec16()?,
        };
        while !list.data.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                return Some(name);
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal but well-formed TLS 1.3 ClientHello for `name`, in one
    /// record (`split` > 0 splits it into two records at that point).
    pub(crate) fn client_hello(name: &str, split: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        // supported_versions first, so server_name is not the first extension.
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        let host = name.as_bytes();
        let list_len = 3 + host.len();
        ext.extend_from_slice(&[0x00, 0x00]);
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(host.len() as u16).to_be_bytes());
        ext.extend_from_slice(host);
        let mut hello = vec![0x03, 0x03];
        hello.extend_from_slice(&[7u8; 32]);
        hello.push(0); // session id
        hello.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        hello.extend_from_slice(&[0x01, 0x00]); // null compression
        hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        hello.extend_from_slice(&ext);
        let mut message = vec![0x01];
        message.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&hello);
        let record = |body: &[u8]| {
            let mut r = vec![0x16, 0x03, 0x01];
            r.extend_from_slice(&(body.len() as u16).to_be_bytes());
            r.extend_from_slice(body);
            r
        };
        if split == 0 {
            record(&message)
        } else {
            let mut out = record(&message[..split]);
            out.extend(record(&message[split..]));
            out
        }
    }

    #[test]
    fn finds_the_tls_server_name_even_across_records() {
        let hello = client_hello("PyPI.org", 0);
        assert_eq!(sniff(&hello), Sniffed::Named("pypi.org".into()));
        assert_eq!(sniff(&hello[..hello.len() - 1]), Sniffed::NeedMore);
        assert_eq!(sniff(&hello[..3]), Sniffed::NeedMore);
        let split = client_hello("files.pythonhosted.org", 20);
        assert_eq!(
            sniff(&split),
            Sniffed::Named("files.pythonhosted.org".into())
        );
        assert_eq!(sniff(&split[..30]), Sniffed::NeedMore);
    }

    #[test]
    fn finds_the_http_host_without_its_port() {
        let req = b"GET /simple/ HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(sniff(req), Sniffed::Named("example.com".into()));
        assert_eq!(sniff(&req[..30]), Sniffed::NeedMore);
        let two = b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n";
        assert_eq!(sniff(two), Sniffed::Unnamed);
        assert_eq!(sniff(b"GET / HTTP/1.0\r\n\r\n"), Sniffed::Unnamed);
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Sniffed::Unnamed
        );
    }

    #[test]
    fn anything_else_is_unnamed() {
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::Unnamed);
        assert_eq!(sniff(&[0x00, 0x01]), Sniffed::Unnamed);
        assert_eq!(sniff(&[0x16, 0x02, 0x00, 0x00, 0x05]), Sniffed::Unnamed);
        assert_eq!(sniff(&client_hello("bad name!", 0)), Sniffed::Unnamed);
        assert_eq!(sniff(&vec![0x16; MAX_SNIFF]), Sniffed::Unnamed);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = sniff(&data);
        }

        #[test]
        fn every_truncation_of_a_hello_needs_more(cut in 0usize..80) {
            let hello = client_hello("a.example.org", 0);
            let cut = cut.min(hello.len() - 1);
            proptest::prop_assert_eq!(sniff(&hello[..cut]), Sniffed::NeedMore);
        }
    }
}
