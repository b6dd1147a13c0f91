//! Creating sandboxes: image, disk, VM, agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use warren_image::{Image, ImageStore, Progress};
use warren_vmm::host::HostCapacity;
use warren_vmm::{
    Accel, AccelChoice, DiskConfig, DiskFormat, NicConfig, QemuVmm, Vm, VmConfig, Vmm, process,
};

use crate::agent::{AgentConnection, ConnectError};
use crate::busy::{Busy, BusyGuard};
use crate::dir::{DataDir, SandboxDir, write_atomic};
use crate::error::{AgentProblem, CreateError, ManagerError};
use crate::id::{is_valid_sandbox_id, new_sandbox_id};
use crate::network::{NetworkConfig, Networking, SandboxNetwork};
use crate::sandbox::Sandbox;
use crate::spec::SandboxSpec;

/// How a manager runs VMs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where images and sandboxes live ($WARREN_HOME).
    pub data_dir: PathBuf,
    /// Image cache directory, if not `data_dir/images`
    /// ($WARREN_IMAGE_CACHE; the test suite shares one across runs).
    pub image_cache: Option<PathBuf>,
    /// KVM, TCG, or pick.
    pub accel: AccelChoice,
    /// QEMU binary (default: `qemu-system-x86_64` from PATH).
    pub qemu_binary: Option<PathBuf>,
    /// The static guest agent binary (default: found next to warren).
    pub guest_agent: Option<PathBuf>,
    /// How long a guest may take to boot (default: 120 s under TCG, 30 s
    /// under KVM).
    pub boot_timeout: Option<Duration>,
    /// VMs die with this process (one-shot use such as `warren run` and
    /// tests) instead of outliving it.
    pub ephemeral: bool,
    /// A tmpfs directory where running cold-booted VMs keep their RAM
    /// (`$WARREN_RAM_DIR`; default `/dev/shm` when it is a tmpfs; `disk`
    /// keeps RAM in the sandbox directory). A pause copies it to disk.
    pub volatile_ram_root: Option<PathBuf>,
    /// Sandbox networks (`None`: off, `WARREN_NET=off`; sandboxes are then
    /// created without a network card).
    pub network: Option<NetworkConfig>,
}

impl ManagerConfig {
    /// Reads `WARREN_HOME`, `WARREN_IMAGE_CACHE`, `WARREN_ACCEL`, `WARREN_QEMU`,
    /// `WARREN_GUEST_AGENT`, `WARREN_BOOT_TIMEOUT` (seconds),
    /// `WARREN_RAM_DIR`, and for networks `WARREN_NET` (`off`),
    /// `WARREN_NET_RANGE` (a CIDR) and `WARREN_DNS_UPSTREAM` (`IP[:PORT]`).
    pub fn from_env() -> Result<Self, EnvConfigError> {
        let accel = match std::env::var("WARREN_ACCEL") {
            Ok(value) => value.parse::<AccelChoice>()?,
            Err(_) => AccelChoice::Auto,
        };
        let boot_timeout = match std::env::var("WARREN_BOOT_TIMEOUT") {
            Ok(value) => Some(Duration::from_secs(value.trim().parse::<u64>().map_err(
                |source| EnvConfigError::BootTimeout {
                    value: value.clone(),
                    source,
                },
            )?)),
            Err(_) => None,
        };
        Ok(Self {
            data_dir: warren_image::default_data_dir(),
            image_cache: std::env::var_os("WARREN_IMAGE_CACHE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            accel,
            qemu_binary: std::env::var_os("WARREN_QEMU").map(PathBuf::from),
            guest_agent: std::env::var_os("WARREN_GUEST_AGENT").map(PathBuf::from),
            boot_timeout,
            ephemeral: true,
            volatile_ram_root: volatile_ram_root_from_env()?,
            network: network_from_env()?,
        })
    }
}

/// A `WARREN_*` variable [`ManagerConfig::from_env`] cannot use; each
/// names the variable and what it takes.
#[derive(Debug, thiserror::Error)]
pub enum EnvConfigError {
    /// `WARREN_ACCEL` names no accelerator.
    #[error("WARREN_ACCEL is not usable")]
    Accel(#[from] warren_vmm::UnknownAccel),
    /// `WARREN_BOOT_TIMEOUT` is not whole seconds.
    #[error("WARREN_BOOT_TIMEOUT={value:?} is not a number of seconds")]
    BootTimeout {
        /// The variable's value.
        value: String,
        /// Why it did not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// `WARREN_RAM_DIR` is not on a tmpfs.
    #[error(
        "WARREN_RAM_DIR={} is not a directory on a tmpfs; point it at one \
         (such as /dev/shm) or set WARREN_RAM_DIR=disk to keep guest RAM on disk",
        .0.display()
    )]
    RamDirNotTmpfs(PathBuf),
    /// `WARREN_NET_RANGE` is a CIDR sandbox networks cannot use.
    #[error("WARREN_NET_RANGE={value:?} cannot hold sandbox networks")]
    NetRange {
        /// The variable's value.
        value: String,
        /// Why the range is refused.
        #[source]
        source: warren_net::layout::RangeError,
    },
    /// `WARREN_DNS_UPSTREAM` is not an address.
    #[error("WARREN_DNS_UPSTREAM={0:?} is not an address such as 192.0.2.53 or 192.0.2.53:5353")]
    DnsUpstream(String),
}

/// The network settings of [`ManagerConfig::from_env`].
fn network_from_env() -> Result<Option<NetworkConfig>, EnvConfigError> {
    if std::env::var("WARREN_NET").is_ok_and(|v| v == "off") {
        return Ok(None);
    }
    let mut config = NetworkConfig::host_default();
    if let Ok(range) = std::env::var("WARREN_NET_RANGE") {
        config.range = range.parse().map_err(|source| EnvConfigError::NetRange {
            value: range,
            source,
        })?;
    }
    if let Ok(upstream) = std::env::var("WARREN_DNS_UPSTREAM") {
        config.upstream = parse_upstream(&upstream).ok_or(EnvConfigError::DnsUpstream(upstream))?;
    }
    Ok(Some(config))
}

/// `IP` (port 53) or `IP:PORT`.
pub fn parse_upstream(text: &str) -> Option<std::net::SocketAddr> {
    text.parse().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| (ip, 53).into())
    })
}

/// `$WARREN_RAM_DIR`: unset means `/dev/shm` if it is a tmpfs, `disk` (or
/// empty) means none, anything else must be a directory on a tmpfs.
fn volatile_ram_root_from_env() -> Result<Option<PathBuf>, EnvConfigError> {
    match std::env::var_os("WARREN_RAM_DIR") {
        None => Ok(warren_vmm::host::default_ram_root()),
        Some(value) if value.is_empty() || value == "disk" => Ok(None),
        Some(value) => {
            let path = PathBuf::from(value);
            if !warren_vmm::host::is_tmpfs(&path) {
                return Err(EnvConfigError::RamDirNotTmpfs(path));
            }
            Ok(Some(path))
        }
    }
}

/// Where the VMs of data directory `data_dir` keep their RAM while they
/// run, by `$WARREN_RAM_DIR` as a [`Manager`] reads it (None: on disk); for
/// tools that audit a host.
pub fn volatile_ram_dir_for(data_dir: &Path) -> Result<Option<PathBuf>, EnvConfigError> {
    Ok(volatile_ram_root_from_env()?.map(|root| volatile_ram_dir(&root, data_dir)))
}

/// The directory of one data directory's volatile RAM files under `root`:
/// named after the data directory, so that several warren homes on one host
/// never touch each other's files.
fn volatile_ram_dir(root: &Path, data_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    root.join(format!("warren-ram-{short}"))
}

/// Creates and tracks sandboxes on this host.
pub struct Manager {
    config: ManagerConfig,
    images: Arc<ImageStore>,
    vmm: Arc<dyn Vmm>,
    host: HostCapacity,
    sandboxes_dir: PathBuf,
    /// Where running cold-booted VMs keep their RAM, if in memory.
    ram_dir: Option<PathBuf>,
    busy: Busy,
    networking: Networking,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.config.data_dir)
            .field("accel", &self.vmm.accel())
            .finish_non_exhaustive()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // An empty RAM directory is removed (one that still holds the RAM
        // of VMs that outlive this process is not).
        if let Some(dir) = &self.ram_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Metadata written into each sandbox directory, so leftovers can be
/// identified and cleaned after a crash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxMeta {
    /// Sandbox id.
    pub id: String,
    /// What it was created with.
    pub spec: SandboxSpec,
    /// Image key.
    pub image_key: String,
    /// Creation time, ms since the epoch.
    pub created_unix_ms: u64,
    /// Pid of the warren process that created it.
    pub owner_pid: u32,
    /// Dies with its owner.
    pub ephemeral: bool,
    /// The kernel it booted (a resume must use the same one).
    #[serde(default)]
    pub kernel: PathBuf,
    /// The initramfs it booted.
    #[serde(default)]
    pub initramfs: PathBuf,
    /// The disk below its first own layer: the image's root filesystem, or
    /// a template's frozen disk for a clone.
    #[serde(default)]
    pub base_disk: PathBuf,
    /// qemu-img format of `base_disk` (`raw` or `qcow2`).
    #[serde(default = "default_base_format")]
    pub base_disk_format: String,
    /// The snapshot template it was cloned from.
    #[serde(default)]
    pub template: Option<String>,
}

impl SandboxMeta {
    /// The metadata of a sandbox that never ran (no image files), for unit
    /// tests of the decisions made from metadata alone.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, ephemeral: bool, owner_pid: u32) -> Self {
        Self {
            id: id.into(),
            spec: SandboxSpec::default(),
            image_key: "key".into(),
            created_unix_ms: 0,
            owner_pid,
            ephemeral,
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            base_disk: PathBuf::new(),
            base_disk_format: "raw".into(),
            template: None,
        }
    }

    /// Whether this is an ephemeral sandbox (one that dies with its owner)
    /// of another warren process that is still alive, and so not this
    /// process's to judge or clean. "Alive" is
    /// [`process::is_running`]: a zombie owner has died (its VMs died with
    /// it), even while its pid is not yet reaped. Recovery, the reconciler
    /// and the start-up sweep all ask this one question.
    pub fn owned_by_another_live_process(&self) -> bool {
        self.ephemeral
            && self.owner_pid != std::process::id()
            && process::is_running(self.owner_pid)
    }

    /// Reads the metadata of the sandbox directory `dir`.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(SandboxDir::new(dir).meta())?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// The boot parts it runs on, as an [`Image`] (what [`Manager::vm_config`]
    /// takes), without asking the image store: a paused sandbox must come
    /// back on exactly the kernel and initramfs it booted.
    pub fn image(&self) -> Image {
        Image {
            name: self.spec.image.clone(),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            rootfs: self.base_disk.clone(),
            kernel_version: String::new(),
            key: self.image_key.clone(),
        }
    }
}

fn default_base_format() -> String {
    "raw".into()
}

impl Manager {
    /// Opens the data directory and picks the VM backend.
    pub fn new(config: ManagerConfig) -> Result<Self, ManagerError> {
        let sandboxes_dir = DataDir::new(&config.data_dir).sandboxes();
        std::fs::create_dir_all(&sandboxes_dir).map_err(|source| ManagerError::DataDir {
            path: sandboxes_dir.clone(),
            source,
        })?;
        let images = Arc::new(match &config.image_cache {
            Some(cache) => ImageStore::open_at(cache)?,
            None => ImageStore::open(&config.data_dir)?,
        });
        let accel =
            warren_vmm::accel::resolve(config.accel).map_err(warren_vmm::LaunchError::from)?;
        let mut qemu = QemuVmm::new(config.qemu_binary.clone(), accel)?;
        let ram_dir = config
            .volatile_ram_root
            .as_ref()
            .map(|root| volatile_ram_dir(root, &config.data_dir));
        if let Some(dir) = &ram_dir {
            qemu = qemu
                .with_volatile_ram(dir.clone())
                .map_err(|source| ManagerError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
        }
        let vmm = Arc::new(qemu);
        let networking = match &config.network {
            Some(network) => Networking::init(network, &config.data_dir),
            None => Networking::disabled(),
        };
        let manager = Self {
            config,
            images,
            vmm,
            host: HostCapacity::probe(),
            sandboxes_dir,
            ram_dir,
            busy: Default::default(),
            networking,
        };
        let swept = manager.sweep_orphans();
        if swept > 0 {
            tracing::info!(
                swept,
                "removed sandboxes left behind by processes that died"
            );
        }
        // Networks of sandboxes whose directory is gone (a `warren run`
        // killed before it cleaned up); running ones keep theirs.
        let sandboxes = manager.sandboxes_dir.clone();
        match manager.networking.sweep(|id| sandboxes.join(id).exists()) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed networks of sandboxes that are gone"),
            Err(error) => tracing::warn!(
                "sweeping sandbox networks failed: {}",
                crate::error::with_causes(&error)
            ),
        }
        Ok(manager)
    }

    /// A manager of `data_dir` over the given backend (a fake in unit
    /// tests), with no RAM directory in host memory and no sweep at start.
    #[cfg(test)]
    pub(crate) fn with_vmm(data_dir: &Path, vmm: Arc<dyn Vmm>) -> Self {
        let sandboxes_dir = DataDir::new(data_dir).sandboxes();
        std::fs::create_dir_all(&sandboxes_dir).unwrap();
        Self {
            config: ManagerConfig {
                data_dir: data_dir.to_path_buf(),
                image_cache: None,
                accel: AccelChoice::Tcg,
                qemu_binary: None,
                guest_agent: None,
                boot_timeout: None,
                ephemeral: false,
                volatile_ram_root: None,
                network: None,
            },
            images: Arc::new(ImageStore::open(data_dir).unwrap()),
            vmm,
            host: HostCapacity::probe(),
            sandboxes_dir,
            ram_dir: None,
            busy: Default::default(),
            networking: Networking::disabled(),
        }
    }

    /// Marks `id` as being worked on until the guard is dropped; the
    /// reconciler skips it meanwhile.
    pub fn mark_busy(&self, id: &str) -> BusyGuard<'_> {
        self.busy.mark(id)
    }

    /// Whether an operation on `id` is under way.
    pub fn is_busy(&self, id: &str) -> bool {
        self.busy.contains(id)
    }

    /// Deletes `path` (a directory or file of the data directory) so that a
    /// crash cannot leave it half done: [`DataDir::trash`].
    pub fn trash(&self, path: &Path) -> std::io::Result<()> {
        DataDir::new(self.data_dir()).trash(path)
    }

    /// The accelerator sandboxes run with.
    pub fn accel(&self) -> Accel {
        self.vmm.accel()
    }

    /// The VM backend.
    pub fn vmm(&self) -> &Arc<dyn Vmm> {
        &self.vmm
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Where sandbox directories live.
    pub fn sandboxes_dir(&self) -> &Path {
        &self.sandboxes_dir
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Host capacity used to validate requests.
    pub fn host(&self) -> HostCapacity {
        self.host
    }

    /// Boot timeout in effect.
    pub fn boot_timeout(&self) -> Duration {
        self.config.boot_timeout.unwrap_or(match self.accel() {
            Accel::Kvm => Duration::from_secs(30),
            Accel::Tcg => Duration::from_secs(120),
        })
    }

    /// Makes sure an image exists (building it on first use) and returns it.
    pub async fn prepare_image(
        &self,
        name: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<Image, CreateError> {
        let agent = match &self.config.guest_agent {
            Some(path) => path.clone(),
            None => warren_image::find_guest_agent()?,
        };
        let images = self.images.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || images.ensure(&name, &agent, progress.as_ref()))
            .await
            .map_err(CreateError::ImageTask)?
            .map_err(CreateError::from)
    }

    /// The VM configuration a sandbox of `spec` on `image` gets; also used
    /// by the benchmark that boots plain QEMU with identical arguments.
    pub fn vm_config(
        &self,
        id: &str,
        dir: &Path,
        spec: &SandboxSpec,
        image: &Image,
        disk: &Path,
    ) -> VmConfig {
        VmConfig {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: image.kernel.clone(),
            initramfs: image.initramfs.clone(),
            kernel_args: Vec::new(),
            root_disk: DiskConfig {
                path: disk.to_path_buf(),
                format: DiskFormat::Qcow2,
                read_only: false,
            },
            accel: self.accel(),
            die_with_parent: self.config.ephemeral,
            memory_file: None,
            incoming: false,
            nic: None,
        }
    }

    /// Creates a sandbox and returns it once its agent answers.
    pub async fn create(
        &self,
        spec: SandboxSpec,
        progress: Arc<dyn Progress>,
    ) -> Result<Sandbox, CreateError> {
        self.create_with_id(new_sandbox_id(), spec, progress).await
    }

    /// [`Manager::create`] with an id the caller chose (from
    /// [`crate::id::new_sandbox_id`]), so that it can mark the id busy
    /// until it has registered the sandbox.
    pub async fn create_with_id(
        &self,
        id: String,
        spec: SandboxSpec,
        progress: Arc<dyn Progress>,
    ) -> Result<Sandbox, CreateError> {
        if !is_valid_sandbox_id(&id) {
            return Err(CreateError::InvalidId(id));
        }
        let _busy = self.mark_busy(&id);
        spec.validate(&self.host)
            .map_err(CreateError::InvalidSpec)?;
        let spec = self.networking.fit(spec);
        let image = self.prepare_image(&spec.image, progress).await?;
        let dir = self.sandboxes_dir.join(&id);
        std::fs::create_dir(&dir).map_err(|source| CreateError::Io {
            path: dir.clone(),
            source,
        })?;
        // Removes the directory on error *and* if this future is dropped
        // midway (a caller's timeout or Ctrl-C); the VM handle inside
        // `boot` kills its process on drop the same way.
        let guard = DirGuard(Some(dir.clone()));
        let sandbox = self.boot(&id, &dir, spec, &image).await?;
        guard.disarm();
        Ok(sandbox)
    }

    async fn boot(
        &self,
        id: &str,
        dir: &Path,
        spec: SandboxSpec,
        image: &Image,
    ) -> Result<Sandbox, CreateError> {
        let meta = SandboxMeta {
            id: id.to_string(),
            spec: spec.clone(),
            image_key: image.key.clone(),
            created_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            owner_pid: std::process::id(),
            ephemeral: self.config.ephemeral,
            kernel: image.kernel.clone(),
            initramfs: image.initramfs.clone(),
            base_disk: image.rootfs.clone(),
            base_disk_format: "raw".into(),
            template: None,
        };
        let meta_path = SandboxDir::new(dir).meta();
        let meta_json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write_atomic(&meta_path, &meta_json).map_err(|source| CreateError::Io {
            path: meta_path.clone(),
            source,
        })?;

        // The disk layer and the network side by side (an error of either
        // drops the other's result, which removes the network).
        let disk = SandboxDir::new(dir).disk();
        let (overlay, network) = tokio::join!(
            warren_vmm::disk::create_overlay(&image.rootfs, "raw", &disk),
            self.attach_network(id, &spec)
        );
        overlay?;
        let network = network?;

        let mut config = self.vm_config(id, dir, &spec, image, &disk);
        let network = network.map(|(network, nic)| {
            config.nic = Some(nic);
            config.kernel_args.push(crate::network::kernel_arg());
            network
        });
        let vm = self.vmm.launch(config).await?;
        let connected = connect_agent(id, vm.as_ref(), self.boot_timeout()).await;
        let agent = match connected {
            Ok(agent) => agent,
            Err(error) => {
                let _ = vm.kill().await;
                return Err(error);
            }
        };
        let sandbox = Sandbox::new(id, dir.to_path_buf(), vm, agent, spec, image.key.clone());
        sandbox.set_network(network);
        finish_boot(&sandbox, id).await?;
        Ok(sandbox)
    }

    /// The tmpfs directory where running cold-booted VMs keep their RAM
    /// (None: in their sandbox directory), for tools that boot VMs the same
    /// way outside the manager.
    pub fn volatile_ram_dir(&self) -> Option<&Path> {
        self.ram_dir.as_deref()
    }

    /// The host's sandbox networking.
    pub fn networking(&self) -> &Networking {
        &self.networking
    }

    /// Makes the network a sandbox's spec asks for, if any: the network to
    /// hand to the [`Sandbox`] and the NIC for its VM. It runs `ip` and
    /// `nft`, so on a blocking thread, which lets a create make it while
    /// the disk layer (and a resume's memory daemon) are made. Dropping the
    /// network removes it, so an error on the way, or this future dropped
    /// midway, leaves nothing behind.
    pub(crate) async fn attach_network(
        &self,
        id: &str,
        spec: &SandboxSpec,
    ) -> Result<Option<(SandboxNetwork, NicConfig)>, CreateError> {
        let Some(policy) = spec.network.clone() else {
            return Ok(None);
        };
        let networking = self.networking.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || networking.attach(&id, &policy))
            .await
            .expect("the network set-up thread panicked")
            .map(Some)
            .map_err(CreateError::Network)
    }

    /// Whether VMs die with this process.
    pub fn ephemeral(&self) -> bool {
        self.config.ephemeral
    }

    /// Removes sandboxes whose ephemeral owner process died (killing any VM
    /// that survived it) and directories of creations that never finished.
    /// Returns how many were removed.
    pub fn sweep_orphans(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.sandboxes_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if !is_valid_sandbox_id(id) {
                continue;
            }
            let dir = entry.path();
            let meta = SandboxMeta::read(&dir).ok();
            let orphan = match &meta {
                Some(meta) => {
                    meta.ephemeral
                        && !meta.owned_by_another_live_process()
                        && meta.owner_pid != std::process::id()
                }
                // No metadata: a creation that died before writing it.
                None => dir_age(&dir).is_some_and(|age| age > Duration::from_secs(600)),
            };
            if !orphan {
                continue;
            }
            // A VM that survived it (and is really that sandbox's VM: the
            // pid may have been reused).
            if let Some(pid) = self.vmm.running_pid(&dir, id) {
                self.vmm.kill_process(pid);
            }
            // A memory daemon that died with its owner leaves a dead mount.
            let _ = nix::mount::umount2(
                &SandboxDir::new(&dir).memfs_mount(),
                nix::mount::MntFlags::MNT_DETACH,
            );
            if self.trash(&dir).is_ok() {
                tracing::info!(%id, "removed orphaned sandbox");
                removed += 1;
            }
        }
        removed
    }
}

/// Checks the agent's protocol and sets the guest clock: the last steps of a
/// boot, a resume and a clone alike.
pub(crate) async fn finish_boot(sandbox: &Sandbox, id: &str) -> Result<(), CreateError> {
    let unusable = |source| CreateError::Agent {
        id: id.to_string(),
        source: Box::new(source),
    };
    let info = sandbox.info().await.map_err(|source| {
        unusable(AgentProblem::Call {
            what: "asking the guest agent what it is",
            source,
        })
    })?;
    if info.protocol_version != warren_proto::PROTOCOL_VERSION {
        return Err(unusable(AgentProblem::Protocol {
            guest: info.protocol_version,
            host: warren_proto::PROTOCOL_VERSION,
        }));
    }
    sandbox.ensure_clock().await.map_err(|source| {
        unusable(AgentProblem::Call {
            what: "setting the guest clock",
            source,
        })
    })?;
    Ok(())
}

/// Waits for the agent handshake, or the VM's death, or the timeout.
pub(crate) async fn connect_agent(
    id: &str,
    vm: &dyn Vm,
    timeout: Duration,
) -> Result<AgentConnection, CreateError> {
    let mut exit = vm.exit_watch();
    let connect = AgentConnection::connect(vm.agent_socket().to_path_buf(), timeout);
    let died = async move {
        let _ = exit.wait_for(Option::is_some).await.map(|_| ());
    };
    let outcome = tokio::select! {
        result = connect => Some(result),
        () = died => None,
    };
    let error = match outcome {
        Some(Ok(agent)) => return Ok(agent),
        Some(Err(error)) => Some(error),
        None => None,
    };
    // A dying VM closes the channel a moment before its exit is noticed:
    // give the exit a chance to explain the error.
    wait_for_exit(vm, Duration::from_millis(500)).await;
    let console_tail = process::tail_of(vm.console_log(), 1500);
    if let Some(exit) = vm.exit() {
        return Err(CreateError::BootFailed {
            id: id.to_string(),
            exit,
            console_tail,
        });
    }
    match error {
        Some(ConnectError::HandshakeTimeout(_)) => Err(CreateError::BootTimeout {
            id: id.to_string(),
            after: timeout,
            console_tail,
        }),
        Some(ConnectError::Transport(error)) => Err(CreateError::Agent {
            id: id.to_string(),
            source: Box::new(AgentProblem::Channel(error)),
        }),
        None => Err(CreateError::Agent {
            id: id.to_string(),
            source: Box::new(AgentProblem::VmExited),
        }),
    }
}

/// Waits up to `limit` for the VM to be seen exited.
async fn wait_for_exit(vm: &dyn Vm, limit: Duration) {
    let mut exit = vm.exit_watch();
    let waited = tokio::time::timeout(limit, async move {
        let _ = exit.wait_for(Option::is_some).await.map(|_| ());
    });
    waited.await.ok();
}

fn dir_age(dir: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(dir).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// Removes a directory when dropped, unless disarmed.
pub(crate) struct DirGuard(Option<PathBuf>);

impl DirGuard {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self(Some(dir))
    }

    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_vmm::FakeVmm;

    fn meta(id: &str, ephemeral: bool, owner_pid: u32) -> SandboxMeta {
        SandboxMeta::for_test(id, ephemeral, owner_pid)
    }

    /// A child that has exited but is not reaped: its pid is taken
    /// ([`process::exists`]) but it does not run ([`process::is_running`]).
    fn zombie() -> std::process::Child {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = std::time::Instant::now();
        while process::is_running(pid) {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(process::exists(pid), "not reaped yet");
        child
    }

    #[test]
    fn an_ephemeral_sandbox_belongs_to_its_owner_only_while_the_owner_runs() {
        let me = std::process::id();
        assert!(!meta("sb-a", false, 1).owned_by_another_live_process());
        assert!(!meta("sb-a", true, me).owned_by_another_live_process());
        // Pid 1 runs and is not this process.
        assert!(meta("sb-a", true, 1).owned_by_another_live_process());
        let mut zombie = zombie();
        assert!(
            !meta("sb-a", true, zombie.id()).owned_by_another_live_process(),
            "a zombie owner has died"
        );
        zombie.wait().unwrap();
    }

    #[test]
    fn the_start_up_sweep_and_recovery_agree_on_whose_a_sandbox_is() {
        let home = tempfile::tempdir().unwrap();
        let manager = Manager::with_vmm(home.path(), Arc::new(FakeVmm::default()));
        let mut zombie = zombie();
        let data = DataDir::new(home.path());
        for (id, owner) in [("sb-live", 1), ("sb-dead", zombie.id())] {
            let dir = data.sandbox(id);
            std::fs::create_dir_all(dir.path()).unwrap();
            let json = serde_json::to_vec(&meta(id, true, owner)).unwrap();
            write_atomic(&dir.meta(), &json).unwrap();
        }

        // The sweep removes the sandbox of the owner that died (a zombie
        // counts as dead, as it does for recovery) and keeps the other's.
        assert_eq!(manager.sweep_orphans(), 1);
        assert!(data.sandbox("sb-live").path().exists());
        assert!(!data.sandbox("sb-dead").path().exists());
        zombie.wait().unwrap();
    }
}
