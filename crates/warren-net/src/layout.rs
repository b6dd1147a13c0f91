//! The addresses and names of sandbox networks: what every guest sees (the
//! same in every sandbox, so a snapshot resumes or clones without
//! reconfiguring the guest) and what is unique per slot on the host.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The guest's fixed view of its network, identical in every sandbox.
pub mod guest {
    use std::net::Ipv4Addr;

    /// The guest's address on `eth0` (a /30 shared with the gateway). A
    /// link-local block, as E2B uses, so it never shadows a destination the
    /// guest might want to reach.
    pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
    /// The gateway: the TAP device in the sandbox's namespace, where the
    /// resolver and the name-checking proxy listen.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
    /// Prefix length of the guest/gateway link.
    pub const PREFIX_LEN: u8 = 30;
    /// The guest NIC's MAC (locally administered): fixed, so a restored
    /// guest's ARP cache and interface stay right.
    pub const MAC: [u8; 6] = [0x02, 0x77, 0x72, 0x6e, 0x00, 0x15];
    /// The gateway's MAC (the TAP device's), fixed too: a resumed or
    /// cloned guest's ARP cache still names it, and a new TAP with a new
    /// random MAC would silently drop every frame the guest sends.
    pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x77, 0x72, 0x6e, 0x00, 0x16];
    /// The guest interface name the init configures.
    pub const INTERFACE: &str = "eth0";

    /// The MAC as QEMU's `mac=` wants it.
    pub fn mac_string() -> String {
        colon_hex(&MAC)
    }

    /// The gateway's MAC as `ip link` wants it.
    pub fn gateway_mac_string() -> String {
        colon_hex(&GATEWAY_MAC)
    }

    fn colon_hex(mac: &[u8; 6]) -> String {
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The namespace-side device names: the same in every namespace.
pub mod device {
    /// The TAP device QEMU's virtio-net attaches to.
    pub const TAP: &str = "tap0";
    /// The namespace end of the veth pair to the host.
    pub const VETH: &str = "veth0";
}

/// The prefix of every host-side interface and namespace warren makes, so
/// host rules can name them all (`wrn*`) and strays can be found.
pub const HOST_IFACE_PREFIX: &str = "wrn";
/// The prefix of namespace names under `/run/netns`.
pub const NETNS_PREFIX: &str = "warren-";

/// Where host-side addresses of all sandbox networks come from: one /30
/// per slot. Default 10.231.0.0/16 (16383 slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange(Ipv4Net);

/// Why a host range cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// Fewer than two /30s.
    #[error(
        "the sandbox network range {0} is too small; give a /29 or larger (the default is 10.231.0.0/16)"
    )]
    TooSmall(Ipv4Net),
    /// Overlaps what is always blocked or the guest's own link.
    #[error(
        "the sandbox network range {0} overlaps loopback, link-local or multicast addresses; pick a private block such as 10.231.0.0/16"
    )]
    Reserved(Ipv4Net),
    /// Not an IPv4 CIDR at all.
    #[error("{0:?} is not an IPv4 CIDR such as 10.231.0.0/16")]
    Syntax(String, #[source] ipnet::AddrParseError),
}

impl std::str::FromStr for HostRange {
    type Err = RangeError;

    /// A range from CIDR text (`--net-range`, `WARREN_NET_RANGE`).
    fn from_str(text: &str) -> Result<Self, RangeError> {
        let net = text
            .trim()
            .parse()
            .map_err(|source| RangeError::Syntax(text.to_owned(), source))?;
        HostRange::new(net)
    }
}

impl Default for HostRange {
    fn default() -> Self {
        HostRange(Ipv4Net::new(Ipv4Addr::new(10, 231, 0, 0), 16).expect("valid prefix"))
    }
}

impl HostRange {
    /// A range of the given block (its host bits are ignored).
    pub fn new(net: Ipv4Net) -> Result<Self, RangeError> {
        let net = net.trunc();
        if net.prefix_len() > 29 {
            return Err(RangeError::TooSmall(net));
        }
        let reserved = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];
        if reserved.iter().any(|r| {
            let r: Ipv4Net = r.parse().expect("constant");
            r.contains(&net.network()) || net.contains(&r.network())
        }) {
            return Err(RangeError::Reserved(net));
        }
        Ok(HostRange(net))
    }

    /// The whole block (for host rules).
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// How many slots the range holds (slot numbers are 1..=this; the
    /// first /30 stays unused so no slot holds the block's network address).
    pub fn slots(&self) -> u32 {
        let size = 1u64 << (32 - u32::from(self.0.prefix_len()));
        u32::try_from(size / 4 - 1).unwrap_or(u32::MAX)
    }

    /// The layout of slot `n`, or `None` outside the range.
    pub fn slot(&self, n: u32) -> Option<SlotLayout> {
        if n == 0 || n > self.slots() {
            return None;
        }
        let base = u32::from(self.0.network()) + n * 4;
        Some(SlotLayout {
            slot: Slot(n),
            host_addr: Ipv4Addr::from(base + 1),
            ns_addr: Ipv4Addr::from(base + 2),
        })
    }
}

/// A slot number: which /30 and which names a sandbox network uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u32);

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything unique about one slot's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLayout {
    /// Its number.
    pub slot: Slot,
    /// The host end of the veth pair.
    pub host_addr: Ipv4Addr,
    /// The namespace end of the veth pair (what the guest's traffic is
    /// masqueraded to before the host masquerades it again).
    pub ns_addr: Ipv4Addr,
}

impl SlotLayout {
    /// The namespace's name under `/run/netns`.
    pub fn netns(&self) -> String {
        format!("{NETNS_PREFIX}{}", self.slot)
    }

    /// The host end of the veth pair (at most 15 bytes: `wrn` + 10 digits).
    pub fn host_iface(&self) -> String {
        format!("{HOST_IFACE_PREFIX}{}", self.slot)
    }
}

/// Parses a namespace name back to its slot (for finding strays).
pub fn slot_of_netns(name: &str) -> Option<Slot> {
    let n = name.strip_prefix(NETNS_PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
        return None;
    }
    n.parse().ok().map(Slot)
}

/// Destinations no policy can open: this host's sandbox range (other
/// sandboxes and the host's side of every veth), loopback, "this network",
/// link-local and metadata (169.254.0.0/16), multicast and reserved.
pub fn always_blocked(range: &HostRange) -> Vec<Ipv4Net> {
    let mut nets: Vec<Ipv4Net> = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"]
        .iter()
        .map(|s| s.parse().expect("constant"))
        .collect();
    nets.push(range.net());
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_get_disjoint_addresses_and_short_names() {
        let r = HostRange::default();
        assert_eq!(r.slots(), 16383);
        assert!(r.slot(0).is_none());
        assert!(r.slot(16384).is_none());
        let one = r.slot(1).unwrap();
        assert_eq!(one.host_addr, Ipv4Addr::new(10, 231, 0, 5));
        assert_eq!(one.ns_addr, Ipv4Addr::new(10, 231, 0, 6));
        let last = r.slot(16383).unwrap();
        assert_eq!(last.ns_addr, Ipv4Addr::new(10, 231, 255, 254));
        assert!(last.host_iface().len() <= 15);
        assert_eq!(one.netns(), "warren-1");
        assert_eq!(slot_of_netns("warren-1"), Some(Slot(1)));
        for bad in ["warren-", "warren-01", "warren-x", "other-1"] {
            assert_eq!(slot_of_netns(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_that_cannot_work_are_refused() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(matches!(
            HostRange::new(n("10.0.0.0/30")),
            Err(RangeError::TooSmall(_))
        ));
        assert!(matches!(
            HostRange::new(n("169.254.0.0/24")),
            Err(RangeError::Reserved(_))
        ));
        assert!(matches!(
            HostRange::new(n("0.0.0.0/0")),
            Err(RangeError::Reserved(_))
        ));
        assert_eq!(HostRange::new(n("10.9.0.0/29")).unwrap().slots(), 1);
    }

    #[test]
    fn the_guest_mac_is_locally_administered_unicast() {
        assert_eq!(guest::MAC[0] & 0b11, 0b10);
        assert_eq!(guest::mac_string(), "02:77:72:6e:00:15");
    }
}
