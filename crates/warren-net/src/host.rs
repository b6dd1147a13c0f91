//! The host's part: forwarding on, the shared host table, the slot
//! claims, and finding networks nobody owns any more.

use std::path::PathBuf;

use crate::claims::{Claim, ClaimError, Claims};
use crate::cmd::{self, CommandError, NFT};
use crate::layout::{HostRange, Slot, slot_of_netns};
use crate::netns::NETNS_DIR;
use crate::nft;
use crate::policy::NetworkPolicy;
use crate::sandbox::{self, NetError, SandboxNet};

/// Why the host cannot give sandboxes a network.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// This warren was started with networking off.
    #[error("sandbox networking is turned off for this warren (WARREN_NET=off)")]
    Disabled,
    /// Not root: namespaces and rules need CAP_NET_ADMIN and CAP_SYS_ADMIN.
    #[error(
        "sandbox networking needs root (CAP_NET_ADMIN); run warren as root, or create sandboxes with internet off"
    )]
    NotRoot,
    /// A tool is missing or refused the host table.
    #[error("setting up the host's sandbox network rules")]
    Command(#[source] CommandError),
    /// Forwarding could not be turned on.
    #[error("turning on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")]
    Forwarding(#[source] std::io::Error),
    /// A slot claim could not be read or written.
    #[error("claiming a sandbox network slot")]
    Claim(#[source] ClaimError),
    /// The sandbox's own network failed.
    #[error("making the sandbox's network")]
    Sandbox(#[source] NetError),
}

/// One warren's view of the host's sandbox networks.
#[derive(Debug, Clone)]
pub struct HostNet {
    range: HostRange,
    claims: Claims,
    owner: String,
}

impl HostNet {
    /// Prepares the host: checks the tools, turns on IPv4 forwarding (a
    /// host-wide setting; logged) and installs the host table. `owner`
    /// names this warren in slot claims: its data directory, an existing
    /// path (claims of owners whose directory is gone are swept here).
    pub fn init(
        range: HostRange,
        claims_dir: impl Into<PathBuf>,
        owner: impl Into<String>,
    ) -> Result<Self, HostNetError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(HostNetError::NotRoot);
        }
        sandbox::nft_available().map_err(HostNetError::Command)?;
        let forward = "/proc/sys/net/ipv4/ip_forward";
        let on = std::fs::read_to_string(forward).is_ok_and(|v| v.trim() == "1");
        if !on {
            tracing::info!("turning on IPv4 forwarding on this host, for sandbox networks");
            std::fs::write(forward, "1").map_err(HostNetError::Forwarding)?;
        }
        cmd::run(NFT, &["-f", "-"], Some(&nft::host_script())).map_err(HostNetError::Command)?;
        let host = HostNet {
            range,
            claims: Claims::new(claims_dir),
            owner: owner.into(),
        };
        host.sweep_abandoned()?;
        Ok(host)
    }

    /// Removes the networks of claims whose owner's data directory no
    /// longer exists: no warren can ever come back for them.
    fn sweep_abandoned(&self) -> Result<(), HostNetError> {
        for (slot, claim) in self.claims.list().map_err(HostNetError::Claim)? {
            if std::path::Path::new(&claim.owner).exists() {
                continue;
            }
            tracing::info!(%slot, owner = claim.owner, sandbox = claim.sandbox, "removing a network whose warren data directory is gone");
            if let Some(layout) = self.range.slot(slot.0) {
                SandboxNet::from_layout(layout)
                    .destroy()
                    .map_err(HostNetError::Sandbox)?;
            }
            self.claims.release(slot).map_err(HostNetError::Claim)?;
        }
        Ok(())
    }

    /// The address range of this host's slots.
    pub fn range(&self) -> &HostRange {
        &self.range
    }

    fn claim(&self, sandbox: &str) -> Claim {
        Claim {
            owner: self.owner.clone(),
            sandbox: sandbox.to_owned(),
        }
    }

    /// Claims a slot and makes the network of `sandbox` on it. A failure
    /// gives the slot back and leaves nothing behind.
    pub fn create(
        &self,
        sandbox: &str,
        policy: &NetworkPolicy,
    ) -> Result<SandboxNet, HostNetError> {
        let slot = self
            .claims
            .take(self.range.slots(), &self.claim(sandbox))
            .map_err(HostNetError::Claim)?;
        let layout = self.range.slot(slot.0).expect("claimed slots are in range");
        match SandboxNet::create(layout, policy, &self.range) {
            Ok(net) => Ok(net),
            Err(e) => {
                if let Err(release) = self.claims.release(slot) {
                    tracing::warn!(%slot, "giving back a slot after a failed create: {release}");
                }
                Err(HostNetError::Sandbox(e))
            }
        }
    }

    /// Re-adopts the network of `sandbox` on `slot` after a restart:
    /// `Ok(None)` when the slot is held by someone else or its namespace
    /// is gone (the caller then makes a new one).
    pub fn adopt(&self, sandbox: &str, slot: Slot) -> Result<Option<SandboxNet>, HostNetError> {
        let Some(layout) = self.range.slot(slot.0) else {
            return Ok(None);
        };
        if !self
            .claims
            .take_exact(slot, &self.claim(sandbox))
            .map_err(HostNetError::Claim)?
        {
            return Ok(None);
        }
        Ok(SandboxNet::adopt(layout))
    }

    /// The network this warren made for `sandbox`, found by its slot
    /// claim (after a restart), if its namespace still exists.
    pub fn find(&self, sandbox: &str) -> Result<Option<SandboxNet>, HostNetError> {
        let claims = self.claims.list().map_err(HostNetError::Claim)?;
        Ok(claims
            .into_iter()
            .find(|(_, c)| c.owner == self.owner && c.sandbox == sandbox)
            .and_then(|(slot, _)| self.range.slot(slot.0))
            .and_then(SandboxNet::adopt))
    }

    /// Removes a sandbox's network and gives its slot back.
    pub fn destroy(&self, net: &SandboxNet) -> Result<(), HostNetError> {
        net.destroy().map_err(HostNetError::Sandbox)?;
        self.claims
            .release(net.layout().slot)
            .map_err(HostNetError::Claim)
    }

    /// Removes every network this warren owns whose sandbox `keep` does
    /// not name, and every namespace of this range that no claim holds.
    /// Returns the slots removed.
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<Slot>, HostNetError> {
        let mut removed = Vec::new();
        let claims = self.claims.list().map_err(HostNetError::Claim)?;
        for (slot, claim) in &claims {
            if claim.owner == self.owner && !keep(&claim.sandbox) {
                if let Some(layout) = self.range.slot(slot.0) {
                    SandboxNet::from_layout(layout)
                        .destroy()
                        .map_err(HostNetError::Sandbox)?;
                }
                self.claims.release(*slot).map_err(HostNetError::Claim)?;
                removed.push(*slot);
            }
        }
        let held: std::collections::BTreeSet<Slot> = claims.iter().map(|(s, _)| *s).collect();
        for slot in unclaimed_namespaces(&held) {
            if let Some(layout) = self.range.slot(slot.0) {
                SandboxNet::from_layout(layout)
                    .destroy()
                    .map_err(HostNetError::Sandbox)?;
                removed.push(slot);
            }
        }
        Ok(removed)
    }
}

/// Namespaces named like ours that no claim holds (a crash between making
/// a namespace and... nothing: claims come first, so these are left by a
/// crash during release, or by a reboot-surviving /run).
fn unclaimed_namespaces(held: &std::collections::BTreeSet<Slot>) -> Vec<Slot> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<Slot> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(slot_of_netns))
        .filter(|s| !held.contains(s))
        .collect();
    out.sort();
    out
}

/// Every namespace of warren's naming on this host, for leak checks
/// (tests and `warren bench faults`).
pub fn warren_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| slot_of_netns(n).is_some())
        .collect();
    out.sort();
    out
}
