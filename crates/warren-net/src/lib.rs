//! A network per sandbox: its own network namespace on the host, a TAP
//! device for QEMU's virtio-net, a veth pair to the host with NAT out, and
//! the sandbox's egress policy enforced by nftables in that namespace (not
//! by the guest).
//!
//! Every guest sees the same address, gateway and MAC
//! ([`layout::guest`]), so a snapshot resumes or clones with no change
//! inside the guest; what differs per sandbox is the host side of its
//! slot ([`layout::HostRange`]). Always blocked, whatever a policy says:
//! the host itself, link-local and metadata addresses, and every other
//! sandbox.
//!
//! This crate owns every `ip` and `nft` call warren makes; nothing else
//! touches namespaces or rules.

mod claims;
mod cmd;
mod egress;
mod host;
pub mod layout;
mod listeners;
mod netns;
mod nft;
mod policy;
mod sandbox;
pub mod sni;

pub use claims::{Claim, ClaimError, Claims, DEFAULT_CLAIMS_DIR};
pub use cmd::CommandError;
pub use egress::Egress;
pub use host::{HostNet, HostNetError, warren_namespaces};
pub use listeners::{ListeningPort, listening_ports};
pub use netns::{EnterError, run_in};
pub use nft::{PROXY_PORT, RESOLVER_PORT};
pub use policy::{
    DomainPattern, EgressRule, MAX_RULES, NetworkPolicy, PolicyError, RuleError, RuleList, Verdict,
};
pub use sandbox::{NetError, SandboxNet};
