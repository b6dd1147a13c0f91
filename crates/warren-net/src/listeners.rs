//! Which TCP ports a guest listens on, read from its `/proc/net/tcp` and
//! `/proc/net/tcp6` (fetched through the agent, so the bytes are the
//! guest's and untrusted: any line that is not a well-formed listening
//! socket is skipped, nothing panics, and the output is bounded by the
//! port space).
//!
//! Written by hand: the format is the kernel's fixed-column text, and no
//! crate parses a *guest's* copy of it (procfs crates read this host's).

use std::collections::BTreeMap;

/// The kernel's `TCP_LISTEN` state, as `/proc/net/tcp` prints it.
const LISTEN: &str = "0A";

/// A port something in the guest listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListeningPort {
    /// The TCP port.
    pub port: u16,
    /// Every listener on it is bound to a loopback address (127.0.0.0/8,
    /// ::1), so warren's port forms cannot reach it: the server must
    /// listen on 0.0.0.0 or the guest's address.
    pub loopback_only: bool,
}

/// The listening ports in the text of `/proc/net/tcp` and/or
/// `/proc/net/tcp6` (concatenated or separate calls merged by the
/// caller), sorted by port. The guest is x86_64, so addresses are the
/// little-endian words the kernel prints.
pub fn listening_ports(tables: &[&[u8]]) -> Vec<ListeningPort> {
    let mut ports: BTreeMap<u16, bool> = BTreeMap::new();
    for table in tables {
        for line in table.split(|b| *b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            if let Some((port, loopback)) = listener(line) {
                let only_loopback = ports.entry(port).or_insert(true);
                *only_loopback &= loopback;
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, loopback_only)| ListeningPort {
            port,
            loopback_only,
        })
        .collect()
}

/// `(port, bound to loopback)` of one table line in state LISTEN.
fn listener(line: &str) -> Option<(u16, bool)> {
    let mut fields = line.split_ascii_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None;
    }
    let local = fields.next()?;
    let _remote = fields.next()?;
    if fields.next()? != LISTEN {
        return None;
    }
    let (address, port) = local.split_once(':')?;
    // The kernel prints exactly `%04X` (and from_str_radix would take a
    // sign).
    if port.len() != 4 || !port.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok().filter(|p| *p != 0)?;
    Some((port, is_loopback(address)?))
}

/// Whether a hex address of the table (8 digits for IPv4, 32 for IPv6,
/// each 32-bit word in the guest's little-endian order) is loopback.
fn is_loopback(hex: &str) -> Option<bool> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let words: Vec<[u8; 4]> = match hex.len() {
        8 | 32 => hex
            .as_bytes()
            .chunks(8)
            .map(|word| {
                let word = std::str::from_utf8(word).ok()?;
                u32::from_str_radix(word, 16).ok().map(u32::to_le_bytes)
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    let bytes: Vec<u8> = words.concat();
    Some(match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).is_loopback(),
        _ => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            let v6 = std::net::Ipv6Addr::from(octets);
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as a Debian guest's kernel prints them: python's http.server
    /// on 0.0.0.0:8000, something on 127.0.0.1:5432, an established
    /// connection from port 8000, sshd-like listeners on :: port 22 and
    /// ::1 port 631.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 16834 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 16835 1 0000000000000000 100 0 0 10 0
   2: 0200A8C0:1F40 0100A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 16900 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17000 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17001 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1538 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17002 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_are_found_and_loopback_ones_marked() {
        let ports = listening_ports(&[TCP.as_bytes(), TCP6.as_bytes()]);
        let want = |port, loopback_only| ListeningPort {
            port,
            loopback_only,
        };
        assert_eq!(
            ports,
            vec![
                want(22, false),
                want(631, true),
                want(5432, true),
                want(8000, false)
            ]
        );
    }

    #[test]
    fn a_port_with_any_reachable_listener_is_reachable() {
        let both = "0: 0100007F:1F40 00000000:0000 0A\n1: 00000000:1F40 00000000:0000 0A\n";
        assert_eq!(
            listening_ports(&[both.as_bytes()]),
            vec![ListeningPort {
                port: 8000,
                loopback_only: false
            }]
        );
    }

    #[test]
    fn garbage_is_skipped() {
        for bad in [
            "",
            "\n\n",
            "0: 00000000:1F40 00000000:0000",
            "0 00000000:1F40 00000000:0000 0A",
            "0: 0000000:1F40 00000000:0000 0A",
            "0: 00000000:0000 00000000:0000 0A",
            "0: 00000000:FFFFF 00000000:0000 0A",
            "0: zzzzzzzz:1F40 00000000:0000 0A",
            "0: 00000000:+1F4 00000000:0000 0A",
            "0: 00000000:1F40 00000000:0000 0B",
            "0: \u{e9}\u{e9}\u{e9}\u{e9}:1F40 00000000:0000 0A",
        ] {
            assert!(listening_ports(&[bad.as_bytes()]).is_empty(), "{bad:?}");
        }
        assert!(listening_ports(&[&[0xff, 0xfe, b'\n', 0]]).is_empty());
    }
}
