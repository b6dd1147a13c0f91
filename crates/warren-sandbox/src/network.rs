//! A sandbox's network as the manager runs it: the host's networking
//! (made once per manager; if the host cannot do it, the reason is kept
//! and told at each create that asks for a network), and per sandbox its
//! slot, its TAP for QEMU, and the resolver/proxy services.
//!
//! A paused sandbox holds no slot: pause gives the network back and a
//! resume makes a new one with the same policy (the guest sees the same
//! addresses in every slot, so it notices nothing but broken TCP
//! connections). After a restart, a running sandbox's network is found
//! again by its slot claim (owner = this data directory, sandbox = id).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use warren_net::layout::{HostRange, guest};
use warren_net::{
    DEFAULT_CLAIMS_DIR, Egress, HostNet, HostNetError, NetError, NetworkPolicy, SandboxNet,
};
use warren_vmm::NicConfig;

/// How the manager gives sandboxes networks.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Host-side addresses of the slots (`--net-range`).
    pub range: HostRange,
    /// Where the sandboxes' resolver sends queries (`--dns-upstream`;
    /// default: the host's first `nameserver`).
    pub upstream: SocketAddr,
    /// The machine-wide slot claims directory.
    pub claims_dir: std::path::PathBuf,
}

impl NetworkConfig {
    /// The defaults: 10.231.0.0/16, the host's resolver, `/run/warren/net`.
    pub fn host_default() -> Self {
        NetworkConfig {
            range: HostRange::default(),
            upstream: host_resolver(),
            claims_dir: DEFAULT_CLAIMS_DIR.into(),
        }
    }
}

/// The first `nameserver` of the host's `/etc/resolv.conf` (port 53), or
/// 127.0.0.53 when there is none (systemd-resolved's stub).
pub fn host_resolver() -> SocketAddr {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 53], 53)))
}

/// Why a sandbox could not get (or change) its network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The host could not be prepared for sandbox networks at start-up.
    #[error(
        "this host cannot give sandboxes a network; create the sandbox with internet off and no allow_out rules, or fix the cause and restart warren"
    )]
    HostUnavailable(#[source] Arc<HostNetError>),
    /// Making or removing this sandbox's network failed.
    #[error("the sandbox's network")]
    Host(#[source] HostNetError),
    /// Its namespace or services failed.
    #[error("the sandbox's network")]
    Net(#[source] NetError),
    /// The sandbox has no network card (made without a network, or a clone
    /// of a template from before networks), so there is no policy to change.
    #[error("this sandbox has no network card; create a new sandbox to get one")]
    NoNetwork,
    /// The new policy is in force but could not be recorded.
    #[error("recording the network policy in {}", path.display())]
    Record {
        /// The metadata file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Records `policy` as the network of the sandbox in `dir` (its metadata
/// file, rewritten atomically), so a resume and a restarted warren use it.
pub(crate) fn record_policy(dir: &Path, policy: &NetworkPolicy) -> Result<(), NetworkError> {
    let path = crate::dir::SandboxDir::new(dir).meta();
    let record = |source| NetworkError::Record {
        path: path.clone(),
        source,
    };
    let bytes = std::fs::read(&path).map_err(record)?;
    let mut meta: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| record(std::io::Error::other(e)))?;
    let spec = meta
        .get_mut("spec")
        .and_then(|s| s.as_object_mut())
        .ok_or_else(|| record(std::io::Error::other("the metadata has no spec")))?;
    spec.insert(
        "network".into(),
        serde_json::to_value(policy).expect("a policy serializes"),
    );
    let json = serde_json::to_vec_pretty(&meta).expect("JSON serializes");
    crate::dir::write_atomic(&path, &json).map_err(record)
}

/// The host's sandbox networking, or why there is none.
#[derive(Debug, Clone)]
pub struct Networking {
    host: Result<HostNet, Arc<HostNetError>>,
    upstream: SocketAddr,
}

impl Networking {
    /// Prepares the host (see [`HostNet::init`]); a failure is logged and
    /// kept, and sandboxes without a network still work.
    pub fn init(config: &NetworkConfig, data_dir: &Path) -> Self {
        let host = HostNet::init(
            config.range,
            &config.claims_dir,
            data_dir.display().to_string(),
        )
        .map_err(|e| {
            tracing::warn!(
                "sandbox networking is unavailable: {}",
                crate::error::with_causes(&e)
            );
            Arc::new(e)
        });
        Networking {
            host,
            upstream: config.upstream,
        }
    }

    /// Whether sandboxes can get networks here.
    pub fn available(&self) -> bool {
        self.host.is_ok()
    }

    /// The spec a create goes ahead with: on a host without sandbox
    /// networks, a sandbox whose policy reaches nothing anyway (internet
    /// off, no `allow_out`) is made without a network card instead of
    /// failing; any other policy still asks for one (and gets the error).
    pub fn fit(&self, mut spec: crate::spec::SandboxSpec) -> crate::spec::SandboxSpec {
        let offline = spec
            .network
            .as_ref()
            .is_some_and(|p| !p.internet && p.allow_out.is_empty());
        if offline && !self.available() {
            spec.network = None;
        }
        spec
    }

    fn host(&self) -> Result<&HostNet, NetworkError> {
        self.host
            .as_ref()
            .map_err(|e| NetworkError::HostUnavailable(e.clone()))
    }

    /// A manager without sandbox networks (unit tests; `WARREN_NET=off`).
    pub fn disabled() -> Self {
        Networking {
            host: Err(Arc::new(HostNetError::Disabled)),
            upstream: SocketAddr::from(([127, 0, 0, 53], 53)),
        }
    }

    /// Makes the network of sandbox `id` and starts its services; returns
    /// it (dropping it removes it again) with the NIC QEMU gets. The
    /// kernel argument the guest init reads is [`kernel_arg`].
    pub fn attach(
        &self,
        id: &str,
        policy: &NetworkPolicy,
    ) -> Result<(SandboxNetwork, NicConfig), NetworkError> {
        let host = self.host()?;
        let net = host.create(id, policy).map_err(NetworkError::Host)?;
        // From here on, dropping `network` removes what was made.
        let mut network = SandboxNetwork::new(host, net, id, policy);
        let tap = network.net.open_tap().map_err(NetworkError::Net)?;
        network.egress = Some(
            Egress::start(&network.net, policy.clone(), self.upstream)
                .map_err(NetworkError::Net)?,
        );
        let nic = NicConfig {
            tap: Arc::new(tap),
            mac: guest::mac_string(),
        };
        Ok((network, nic))
    }

    /// Finds the network of a running sandbox again after a restart (its
    /// claim and namespace still exist) and restarts its services.
    pub fn readopt(
        &self,
        id: &str,
        policy: &NetworkPolicy,
    ) -> Result<Option<SandboxNetwork>, NetworkError> {
        let host = self.host()?;
        let Some(net) = host.find(id).map_err(NetworkError::Host)? else {
            return Ok(None);
        };
        let mut network = SandboxNetwork::new(host, net, id, policy);
        // The rules as recorded: whatever the namespace holds now may be
        // from before a policy change that was cut short.
        network
            .net
            .apply_policy(policy, host.range())
            .map_err(NetworkError::Net)?;
        network.egress = Some(
            Egress::start(&network.net, policy.clone(), self.upstream)
                .map_err(NetworkError::Net)?,
        );
        Ok(Some(network))
    }

    /// Removes networks of this data directory's sandboxes that `keep`
    /// does not name (the reconciler's sweep). Returns how many.
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) -> Result<usize, NetworkError> {
        match &self.host {
            Ok(host) => host
                .sweep(keep)
                .map(|s| s.len())
                .map_err(NetworkError::Host),
            Err(_) => Ok(0),
        }
    }
}

/// The kernel argument that configures the guest's eth0.
pub fn kernel_arg() -> String {
    format!(
        "warren.net={}/{},{},{}",
        guest::ADDRESS,
        guest::PREFIX_LEN,
        guest::GATEWAY,
        guest::GATEWAY
    )
}

/// A sandbox's live network. Dropping it removes the namespace, its rules
/// and its slot claim (every error path of create and resume relies on
/// that); [`SandboxNetwork::leave_running`] keeps them for a later warren.
#[derive(Debug)]
pub struct SandboxNetwork {
    host: HostNet,
    net: SandboxNet,
    egress: Option<Egress>,
    policy: NetworkPolicy,
    id: String,
    /// Left for a later warren: Drop removes nothing.
    kept: bool,
}

impl Drop for SandboxNetwork {
    fn drop(&mut self) {
        self.egress.take();
        if self.kept {
            return;
        }
        if let Err(e) = self.host.destroy(&self.net) {
            tracing::warn!(
                sandbox = self.id,
                "removing the sandbox's network: {}",
                crate::error::with_causes(&e)
            );
        }
    }
}

impl SandboxNetwork {
    fn new(host: &HostNet, net: SandboxNet, id: &str, policy: &NetworkPolicy) -> Self {
        SandboxNetwork {
            host: host.clone(),
            net,
            egress: None,
            policy: policy.clone(),
            id: id.to_owned(),
            kept: false,
        }
    }

    /// Stops serving its resolver and proxy but leaves namespace, rules
    /// and claim for the warren that re-adopts the running VM.
    pub fn leave_running(mut self) {
        self.kept = true;
    }

    /// Its current policy.
    pub fn policy(&self) -> &NetworkPolicy {
        &self.policy
    }

    /// Replaces the policy: kernel rules first (one transaction), then the
    /// resolver's and proxy's copy.
    pub fn set_policy(&mut self, policy: NetworkPolicy) -> Result<(), NetworkError> {
        self.net
            .apply_policy(&policy, self.host.range())
            .map_err(NetworkError::Net)?;
        if let Some(egress) = &self.egress {
            egress.set_policy(policy.clone());
        }
        self.policy = policy;
        Ok(())
    }

    /// The namespace-side handle (the port proxy connects through it).
    pub fn net(&self) -> &SandboxNet {
        &self.net
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SandboxSpec;

    #[test]
    fn without_host_networks_only_offline_sandboxes_go_ahead_without_a_card() {
        let none = Networking::disabled();
        let with = |internet, allow: &[&str]| SandboxSpec {
            network: Some(
                NetworkPolicy::parse(
                    internet,
                    &allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    &[],
                )
                .unwrap(),
            ),
            ..SandboxSpec::default()
        };
        assert_eq!(none.fit(with(false, &[])).network, None);
        assert!(
            none.fit(with(true, &[])).network.is_some(),
            "internet on still asks"
        );
        assert!(none.fit(with(false, &["pypi.org"])).network.is_some());
        let err = none.attach("sb-x", &NetworkPolicy::default()).unwrap_err();
        assert!(matches!(err, NetworkError::HostUnavailable(_)));
        assert!(err.to_string().contains("internet off"), "{err}");
    }
}
