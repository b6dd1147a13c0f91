//! What a sandbox is created with.

use std::collections::BTreeMap;

/// Default image name.
pub const DEFAULT_IMAGE: &str = "debian";
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u32 = 1;
/// Smallest memory a sandbox may ask for: below this the Debian userland
/// runs out of memory on ordinary commands.
pub const MIN_MEMORY_MIB: u32 = 128;

/// The request to create a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxSpec {
    /// Image name (see `warren images`).
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Environment variables every process in the sandbox gets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Caller's labels (not visible in the guest).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// If its VM is lost with no snapshot to fall back to, keep its disk
    /// (under the data directory's `kept/`) for a person to recover from,
    /// instead of deleting it with the sandbox.
    #[serde(default)]
    pub keep_disk: bool,
    /// Its network and egress policy; `None`: no network card at all
    /// (sandboxes recorded before networking existed, and clones of their
    /// templates, which must resume with the devices they were paused with).
    #[serde(default)]
    pub network: Option<warren_net::NetworkPolicy>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            env: BTreeMap::new(),
            metadata: BTreeMap::new(),
            keep_disk: false,
            network: Some(warren_net::NetworkPolicy::default()),
        }
    }
}

/// What is wrong with a [`SandboxSpec`]: each says what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Less memory than the guest userland needs.
    #[error("memory of {asked} MiB is too small; give at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall {
        /// The memory asked for, MiB.
        asked: u32,
    },
    /// More memory than the host has at all.
    #[error("memory of {asked} MiB is more than this host has ({total} MiB in total)")]
    MemoryOverHost {
        /// The memory asked for, MiB.
        asked: u32,
        /// The host's memory, MiB.
        total: u64,
    },
    /// Zero vCPUs.
    #[error("a sandbox needs at least 1 vCPU")]
    NoVcpu,
    /// More vCPUs than the host has CPUs.
    #[error("{asked} vCPUs requested but this host has {cpus} CPUs")]
    VcpusOverHost {
        /// The vCPUs asked for.
        asked: u32,
        /// The host's CPUs.
        cpus: u32,
    },
    /// No image name.
    #[error("the image name is empty")]
    EmptyImage,
    /// An environment variable no process could be given.
    #[error("invalid environment variable {name:?}: names must be non-empty without '=' or NUL")]
    BadEnv {
        /// The variable's name.
        name: String,
    },
}

impl SandboxSpec {
    /// Checks the request against itself and the host's capacity.
    pub fn validate(&self, host: &warren_vmm::host::HostCapacity) -> Result<(), SpecError> {
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(SpecError::MemoryTooSmall {
                asked: self.memory_mib,
            });
        }
        if u64::from(self.memory_mib) > host.memory_total_mib {
            return Err(SpecError::MemoryOverHost {
                asked: self.memory_mib,
                total: host.memory_total_mib,
            });
        }
        if self.vcpus == 0 {
            return Err(SpecError::NoVcpu);
        }
        if self.vcpus > host.cpus {
            return Err(SpecError::VcpusOverHost {
                asked: self.vcpus,
                cpus: host.cpus,
            });
        }
        if self.image.is_empty() {
            return Err(SpecError::EmptyImage);
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(SpecError::BadEnv { name: key.clone() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_vmm::host::HostCapacity;

    const HOST: HostCapacity = HostCapacity {
        memory_total_mib: 4096,
        memory_available_mib: 2048,
        cpus: 2,
    };

    #[test]
    fn accepts_the_default() {
        assert_eq!(SandboxSpec::default().validate(&HOST), Ok(()));
    }

    #[test]
    fn refuses_bad_sizes_with_a_reason() {
        let spec = |memory_mib, vcpus| SandboxSpec {
            memory_mib,
            vcpus,
            ..SandboxSpec::default()
        };
        let refused = [
            (
                spec(0, 1),
                SpecError::MemoryTooSmall { asked: 0 },
                "at least 128",
            ),
            (
                spec(8192, 1),
                SpecError::MemoryOverHost {
                    asked: 8192,
                    total: 4096,
                },
                "4096 MiB",
            ),
            (spec(512, 0), SpecError::NoVcpu, "at least 1 vCPU"),
            (
                spec(512, 3),
                SpecError::VcpusOverHost { asked: 3, cpus: 2 },
                "has 2 CPUs",
            ),
        ];
        for (spec, error, says) in refused {
            assert_eq!(spec.validate(&HOST), Err(error.clone()));
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
