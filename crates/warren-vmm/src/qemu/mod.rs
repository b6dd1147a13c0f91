//! The QEMU backend.
//!
//! A VM is one `qemu-system-x86_64` process in its own process group (so a
//! terminal's Ctrl-C never reaches it and a kill takes any helper with it),
//! watched through a pidfd so its exit is noticed at once even when warren
//! is not its parent.

pub mod cmdline;
pub mod restore_kernel;
pub mod volatile;

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::accel::Accel;
use crate::config::{VmConfig, files};
use crate::error::{KillError, LaunchError, SnapshotError};
use crate::process;
use crate::qmp::QmpClient;
use crate::{SavedState, Vm, VmExit, Vmm};

/// Longest unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long QEMU may take to create and answer its control socket.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGKILLed VM may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Launches VMs with `qemu-system-x86_64`.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    binary: PathBuf,
    accel: Accel,
    /// Where cold-booted VMs keep their RAM (a tmpfs), if not on disk in
    /// the sandbox directory; see [`volatile`].
    volatile_ram: Option<PathBuf>,
}

impl QemuVmm {
    /// A backend using `binary` (or `qemu-system-x86_64` from PATH) and the
    /// given accelerator.
    pub fn new(binary: Option<PathBuf>, accel: Accel) -> Result<Self, LaunchError> {
        let binary = match binary {
            Some(path) => path,
            None => find_in_path("qemu-system-x86_64").ok_or_else(|| LaunchError::VmmMissing {
                binary: "qemu-system-x86_64".into(),
            })?,
        };
        if !binary.exists() {
            return Err(LaunchError::VmmMissing {
                binary: binary.display().to_string(),
            });
        }
        Ok(Self {
            binary,
            accel,
            volatile_ram: None,
        })
    }

    /// Keeps the RAM of cold-booted VMs in `dir` (a directory on a tmpfs,
    /// created if missing) while they run ([`Vm::volatile_memory`]). Leftover
    /// RAM files of VMs that no longer run are removed.
    pub fn with_volatile_ram(mut self, dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let swept = volatile::sweep(&dir).len();
        if swept > 0 {
            tracing::info!(swept, dir = %dir.display(), "removed RAM files of VMs that ended");
        }
        self.volatile_ram = Some(dir);
        Ok(self)
    }

    /// The QEMU binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn validate(&self, config: &VmConfig) -> Result<(), LaunchError> {
        if config.vcpus == 0 {
            return Err(LaunchError::InvalidConfig(
                "a VM needs at least one vCPU".into(),
            ));
        }
        if config.memory_mib < 64 {
            return Err(LaunchError::InvalidConfig(format!(
                "{} MiB of memory is too little to boot Linux; give at least 64",
                config.memory_mib
            )));
        }
        for (what, path) in [
            ("kernel", &config.kernel),
            ("initramfs", &config.initramfs),
            ("root disk", &config.root_disk.path),
            ("VM directory", &config.dir),
        ] {
            if !path.exists() {
                return Err(LaunchError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        for name in [files::QMP_SOCKET, files::AGENT_SOCKET] {
            let path = config.dir.join(name);
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(LaunchError::SocketPathTooLong { path, len });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Vmm for QemuVmm {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    async fn launch(&self, mut config: VmConfig) -> Result<Box<dyn Vm>, LaunchError> {
        config.accel = self.accel;
        self.validate(&config)?;
        remove_runtime_files(&config.dir, false);
        let vmm_log_path = config.dir.join(files::VMM_LOG);
        let vmm_log = File::create(&vmm_log_path).map_err(|source| LaunchError::Io {
            path: vmm_log_path.clone(),
            source,
        })?;
        let volatile_memory = match (&config.memory_file, &self.volatile_ram) {
            (None, Some(dir)) => {
                let placed = volatile::place(dir, &config.id, u64::from(config.memory_mib) << 20);
                if placed.is_none() {
                    tracing::info!(id = %config.id, dir = %dir.display(),
                        "not enough room for the VM's RAM in memory; it goes on disk");
                }
                placed
            }
            _ => None,
        };
        if let Some(path) = &volatile_memory {
            config.memory_file = Some(path.clone());
        }
        let args = cmdline::build_args(&config);
        if volatile_memory.is_some() {
            config.memory_file = None;
        }
        tracing::debug!(id = %config.id, ?args, "launching qemu");
        let child = process::spawn(process::SpawnRequest {
            binary: self.binary.clone(),
            args,
            log: vmm_log,
            die_with_parent: config.die_with_parent,
            inherit: config.nic.iter().map(|nic| nic.tap.clone()).collect(),
        })
        .map_err(|source| {
            if let Some(path) = &volatile_memory {
                let _ = std::fs::remove_file(path);
            }
            LaunchError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            }
        })?;
        let pid = child.id();
        let mut vm = QemuVm::supervise(config, pid, Some(child))?;
        vm.volatile_memory = volatile_memory;
        let pid_path = vm.config.dir.join(files::PID);
        if let Err(source) = process::write_pid_file(&pid_path, pid) {
            let _ = vm.kill().await;
            return Err(LaunchError::Io {
                path: pid_path,
                source,
            });
        }
        match vm.connect_qmp().await {
            Ok(()) => Ok(Box::new(vm)),
            Err(error) => {
                let _ = vm.kill().await;
                Err(error)
            }
        }
    }

    async fn attach(&self, mut config: VmConfig) -> Result<Box<dyn Vm>, LaunchError> {
        config.accel = self.accel;
        let pid = running_pid(&config.dir, &config.id).ok_or_else(|| LaunchError::NotRunning {
            id: config.id.clone(),
            detail: "no live QEMU process with its name was found from its pid file".into(),
        })?;
        let mut vm = QemuVm::supervise(config, pid, None)?;
        vm.volatile_memory = volatile::volatile_memory_of(pid);
        // A QEMU that does not answer its control socket is of no use (it
        // may hang): the caller decides whether to end it.
        match vm.connect_qmp().await {
            Ok(()) => Ok(Box::new(vm)),
            Err(error) => {
                vm.detach();
                Err(error)
            }
        }
    }

    fn running_pid(&self, dir: &Path, id: &str) -> Option<u32> {
        running_pid(dir, id)
    }

    fn live_vms(&self) -> Vec<VmProcess> {
        vm_processes()
    }

    fn kill_process(&self, pid: u32) -> bool {
        kill_vm_process(pid)
    }

    fn sweep_memory(&self, dir: &Path) -> Vec<PathBuf> {
        volatile::sweep(dir)
    }

    fn restore_kernel(&self, kernel: &Path, dir: &Path) -> std::io::Result<PathBuf> {
        restore_kernel::restore_kernel(kernel, dir)
    }
}

/// The pid of the QEMU process of VM `id` whose pid file is in `dir`, if it
/// still runs ([`Vmm::running_pid`]). The pid is checked against the
/// process's command line (pids are reused) and zombies count as gone.
pub fn running_pid(dir: &Path, id: &str) -> Option<u32> {
    let marker = process::vm_marker(id);
    process::live_pid_from_file(&dir.join(files::PID), |args| args.contains(&marker))
}

/// A VM process found on the host: [`crate::VmProcess`] at its old path.
pub use crate::VmProcess;
/// Whether `pid` runs: [`process::is_running`] under the name that
/// warren-cli's restart test still uses.
pub use crate::process::is_running as process_alive;

/// Every live QEMU process on this host that runs a warren VM (any data
/// directory): the reconciler's view of what really runs
/// ([`Vmm::live_vms`]).
pub fn vm_processes() -> Vec<VmProcess> {
    process::find_running(|program| program.contains("qemu-system"))
        .into_iter()
        .filter_map(|(pid, args)| {
            let id = process::id_of_vm_marker(args.windows(2).find(|w| w[0] == "-name")?.get(1)?)?
                .to_string();
            Some(VmProcess {
                pid,
                id,
                cmdline: args.join(" "),
            })
        })
        .collect()
}

/// Ends a VM process found on the host (its whole process group) and waits
/// up to a few seconds for it to vanish; its RAM, if held in host memory,
/// goes with it ([`Vmm::kill_process`]). Returns whether it is gone.
pub fn kill_vm_process(pid: u32) -> bool {
    // Nothing else frees RAM in host memory once the process is gone.
    let ram = volatile::volatile_memory_of(pid);
    let gone = process::kill_group(pid).is_ok();
    if gone && let Some(path) = ram {
        let _ = std::fs::remove_file(path);
    }
    gone
}

/// One QEMU process.
pub struct QemuVm {
    config: VmConfig,
    pid: u32,
    child: Arc<Mutex<Option<Child>>>,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    exit_rx: watch::Receiver<Option<VmExit>>,
    kill_requested: Arc<AtomicBool>,
    detached: AtomicBool,
    /// Keep the RAM file when the VM ends (a pause).
    keep_memory: AtomicBool,
    /// The VM's RAM file when it lives in memory rather than in its
    /// directory (always removed with the VM; a pause persists a copy).
    volatile_memory: Option<PathBuf>,
    agent_socket: PathBuf,
    console_log: PathBuf,
    qmp: tokio::sync::OnceCell<QmpClient>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for QemuVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVm")
            .field("id", &self.config.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl QemuVm {
    /// Watches process `pid` (our `child`, or a VM adopted after a restart
    /// of warren, whose exit status nobody here can collect).
    fn supervise(config: VmConfig, pid: u32, child: Option<Child>) -> Result<Self, LaunchError> {
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit_tx = Arc::new(exit_tx);
        let child = Arc::new(Mutex::new(child));
        let kill_requested = Arc::new(AtomicBool::new(false));
        let pidfd = pidfd_open(pid).map_err(|source| LaunchError::Io {
            path: PathBuf::from(format!("/proc/{pid}")),
            source,
        })?;
        let supervisor = {
            let child = child.clone();
            let exit_tx = exit_tx.clone();
            let kill_requested = kill_requested.clone();
            let vmm_log = config.dir.join(files::VMM_LOG);
            let id = config.id.clone();
            tokio::spawn(async move {
                // SAFETY: the AsyncFd owns the pidfd and nothing else closes
                // or replaces it while registered.
                if let Ok(fd) = unsafe { AsyncFd::register(pidfd) } {
                    let _ = fd.readable().await;
                }
                let exit = reap(&child, &kill_requested, &vmm_log);
                if exit.requested {
                    tracing::debug!(%id, %exit, "VM process ended");
                } else {
                    tracing::warn!(%id, %exit, "VM process ended unexpectedly");
                }
                exit_tx.send_replace(Some(exit));
            })
        };
        Ok(Self {
            agent_socket: config.dir.join(files::AGENT_SOCKET),
            console_log: config.dir.join(files::CONSOLE_LOG),
            config,
            pid,
            child,
            exit_tx,
            exit_rx,
            kill_requested,
            detached: AtomicBool::new(false),
            keep_memory: AtomicBool::new(false),
            volatile_memory: None,
            qmp: tokio::sync::OnceCell::new(),
            supervisor,
        })
    }

    async fn connect_qmp(&self) -> Result<(), LaunchError> {
        let socket = self.config.dir.join(files::QMP_SOCKET);
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let mut exit = self.exit_rx.clone();
        loop {
            if let Some(exit) = exit.borrow().clone() {
                return Err(LaunchError::ExitedEarly(exit));
            }
            if socket.exists() {
                match QmpClient::connect(&socket, CONTROL_TIMEOUT).await {
                    Ok(client) => {
                        let _ = self.qmp.set(client);
                        return Ok(());
                    }
                    Err(error) if Instant::now() >= deadline => return Err(error.into()),
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::ControlTimeout(CONTROL_TIMEOUT));
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), exit.changed()).await;
        }
    }

    /// The QMP session of this VM.
    pub fn qmp(&self) -> Option<&QmpClient> {
        self.qmp.get()
    }

    /// Removes the files the running VM owned (not its disks or logs).
    fn remove_runtime_files(&self) {
        remove_runtime_files(&self.config.dir, self.keep_memory.load(Ordering::SeqCst));
        if let Some(path) = &self.volatile_memory {
            let _ = std::fs::remove_file(path);
        }
    }

    fn kill_now(&self) -> Result<(), KillError> {
        self.kill_requested.store(true, Ordering::SeqCst);
        match killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(source) => Err(KillError::Signal {
                pid: self.pid,
                source,
            }),
        }
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn config(&self) -> &VmConfig {
        &self.config
    }

    fn agent_socket(&self) -> &Path {
        &self.agent_socket
    }

    fn console_log(&self) -> &Path {
        &self.console_log
    }

    fn exit(&self) -> Option<VmExit> {
        self.exit_rx.borrow().clone()
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_rx.clone()
    }

    async fn kill(&self) -> Result<VmExit, KillError> {
        if let Some(exit) = self.exit() {
            self.remove_runtime_files();
            return Ok(exit);
        }
        self.kill_now()?;
        let mut exit = self.exit_rx.clone();
        let waited = tokio::time::timeout(KILL_TIMEOUT, exit.wait_for(Option::is_some)).await;
        let result = match waited {
            Ok(Ok(exit)) => Ok(exit.clone().expect("waited for Some")),
            _ => Err(KillError::StillRunning {
                pid: self.pid,
                timeout: KILL_TIMEOUT,
            }),
        };
        self.remove_runtime_files();
        result
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    fn keep_memory_file(&self) {
        self.keep_memory.store(true, Ordering::SeqCst);
    }

    fn volatile_memory(&self) -> Option<&Path> {
        self.volatile_memory.as_deref()
    }

    async fn save_device_state(
        &self,
        state: &Path,
        timeout: Duration,
    ) -> Result<SavedState, SnapshotError> {
        let qmp = self.qmp.get().ok_or(SnapshotError::NoControl)?;
        let io = |source| SnapshotError::Io {
            path: state.to_path_buf(),
            source,
        };
        let file = File::create(state).map_err(io)?;
        let started = Instant::now();
        qmp.execute("stop", None).await?;
        let stop_ms = started.elapsed().as_millis() as u64;
        let saved = async {
            qmp.execute(
                "migrate-set-capabilities",
                Some(serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
            )
            .await?;
            use std::os::fd::AsFd;
            qmp.send_fd("warren-state-out", file.as_fd()).await?;
            qmp.execute("migrate", Some(serde_json::json!({"uri": "fd:warren-state-out"})))
                .await?;
            qmp.wait_for_migration(timeout).await?;
            Ok::<(), SnapshotError>(())
        }
        .await;
        if let Err(error) = saved {
            let _ = std::fs::remove_file(state);
            return Err(error);
        }
        file.sync_all().map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        Ok(SavedState {
            bytes,
            stop_ms,
            save_ms: started.elapsed().as_millis() as u64 - stop_ms,
        })
    }

    async fn run_state(&self) -> Result<String, SnapshotError> {
        let qmp = self.qmp.get().ok_or(SnapshotError::NoControl)?;
        let status = qmp.execute("query-status", None).await?;
        Ok(status
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_string())
    }

    async fn cont(&self) -> Result<(), SnapshotError> {
        let qmp = self.qmp.get().ok_or(SnapshotError::NoControl)?;
        qmp.execute("cont", None).await?;
        Ok(())
    }

    async fn restore_device_state(
        &self,
        state: &Path,
        timeout: Duration,
    ) -> Result<(), SnapshotError> {
        let qmp = self.qmp.get().ok_or(SnapshotError::NoControl)?;
        let file = File::open(state).map_err(|source| SnapshotError::Io {
            path: state.to_path_buf(),
            source,
        })?;
        qmp.execute(
            "migrate-set-capabilities",
            Some(serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await?;
        use std::os::fd::AsFd;
        qmp.send_fd("warren-state-in", file.as_fd()).await?;
        qmp.execute(
            "migrate-incoming",
            Some(serde_json::json!({"uri": "fd:warren-state-in"})),
        )
        .await?;
        qmp.wait_for_migration(timeout).await?;
        qmp.execute("cont", None).await?;
        Ok(())
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if self.detached.load(Ordering::SeqCst) || self.exit_rx.borrow().is_some() {
            self.supervisor.abort();
            return;
        }
        // Dropped while running and not detached: never leak the process.
        let _ = self.kill_now();
        self.supervisor.abort();
        let exit = reap_blocking(
            &self.child,
            &self.kill_requested,
            &self.config.dir.join(files::VMM_LOG),
        );
        self.exit_tx.send_replace(Some(exit));
        self.remove_runtime_files();
    }
}

fn reap(child: &Mutex<Option<Child>>, requested: &AtomicBool, vmm_log: &Path) -> VmExit {
    let status = child
        .lock()
        .ok()
        .and_then(|mut guard| guard.take())
        .and_then(|mut child| child.wait().ok());
    exit_from(status, requested.load(Ordering::SeqCst), vmm_log)
}

fn reap_blocking(child: &Mutex<Option<Child>>, requested: &AtomicBool, vmm_log: &Path) -> VmExit {
    // SIGKILL has been sent; wait() returns as soon as the kernel tears the
    // process down (milliseconds).
    reap(child, requested, vmm_log)
}

fn exit_from(status: Option<std::process::ExitStatus>, requested: bool, vmm_log: &Path) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    VmExit {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        at: SystemTime::now(),
        requested,
        vmm_log_tail: process::tail_of(vmm_log, 2048),
    }
}

/// Removes the files a running VM owns (not its disks or logs).
fn remove_runtime_files(dir: &Path, keep_memory: bool) {
    for name in [files::QMP_SOCKET, files::AGENT_SOCKET, files::PID] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    if !keep_memory {
        let _ = std::fs::remove_file(dir.join(files::MEMORY));
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
