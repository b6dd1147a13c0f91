//! A live sandbox: one VM plus the connection to its agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

#[cfg(feature = "bench")]
use warren_proto::link::{LinkError, RawThroughput};
use warren_proto::pb;
use warren_proto::pb::agent_client::AgentClient;
use warren_vmm::Vm;
use warren_vmm::host::{ProcessMemory, process_memory};

use crate::agent::{AgentConnection, SandboxShared};
use crate::dir::{DataDir, write_atomic};
use crate::error::{DestroyError, ExecError};
use crate::exec::{Command, Output, Process, ProcessInfo, status_to_exec_error_sync};
use crate::spec::SandboxSpec;

/// What the guest agent reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestInfo {
    /// warren-guest version.
    pub agent_version: String,
    /// Agent protocol version.
    pub protocol_version: u32,
    /// Guest hostname.
    pub hostname: String,
    /// Guest kernel release.
    pub kernel_release: String,
    /// Guest uptime.
    pub uptime_ms: u64,
    /// Guest wall clock (ms since the epoch).
    pub unix_time_ms: i64,
    /// Guest RAM.
    pub mem_total_bytes: u64,
    /// Guest RAM available.
    pub mem_available_bytes: u64,
    /// Guest CPUs.
    pub cpus: u32,
}

impl From<pb::InfoResponse> for GuestInfo {
    fn from(info: pb::InfoResponse) -> Self {
        Self {
            agent_version: info.agent_version,
            protocol_version: info.protocol_version,
            hostname: info.hostname,
            kernel_release: info.kernel_release,
            uptime_ms: info.uptime_ms,
            unix_time_ms: info.unix_time_ms,
            mem_total_bytes: info.mem_total_bytes,
            mem_available_bytes: info.mem_available_bytes,
            cpus: info.cpus,
        }
    }
}

/// Held by a transfer in flight: a pause waits for it (up to
/// `PauseOptions::drain`) before stopping the VM.
#[derive(Debug)]
pub struct PauseHold(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>);

/// A running sandbox.
///
/// Dropping it without [`Sandbox::destroy`] still kills the VM and removes
/// its directory (synchronously), so a panic never leaks a VM. Call
/// `destroy` to do it asynchronously and see errors.
pub struct Sandbox {
    shared: Arc<SandboxShared>,
    dir: PathBuf,
    vm: Option<Box<dyn Vm>>,
    agent: AgentConnection,
    spec: SandboxSpec,
    image_key: String,
    created_at: SystemTime,
    /// The memory daemon of a resumed sandbox.
    memfs: std::sync::Mutex<Option<crate::memfs::MemFs>>,
    /// Left running for a later warren: dropping keeps VM and directory.
    detached: std::sync::atomic::AtomicBool,
    /// Its network, while its VM runs (dropping it removes it).
    network: std::sync::Mutex<Option<crate::network::SandboxNetwork>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.shared.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// [`Sandbox::new`] for a sandbox that exists on disk (a resume or a
    /// re-attach): its spec and image come from its metadata.
    pub(crate) fn from_meta(
        id: &str,
        dir: &Path,
        meta: &crate::manager::SandboxMeta,
        vm: Box<dyn Vm>,
        agent: AgentConnection,
    ) -> Self {
        Self::new(
            id,
            dir.to_path_buf(),
            vm,
            agent,
            meta.spec.clone(),
            meta.image_key.clone(),
        )
    }

    /// Wraps a VM whose agent answered: the one way boot, resume, clone
    /// and re-attach make a sandbox.
    pub(crate) fn new(
        id: &str,
        dir: PathBuf,
        vm: Box<dyn Vm>,
        agent: AgentConnection,
        spec: SandboxSpec,
        image_key: String,
    ) -> Self {
        let shared = Arc::new(SandboxShared {
            id: id.to_string(),
            console_log: vm.console_log().to_path_buf(),
            exit: vm.exit_watch(),
            destroyed: std::sync::atomic::AtomicBool::new(false),
            paused: std::sync::atomic::AtomicBool::new(false),
            transfers: Arc::default(),
            pause_running: tokio::sync::Mutex::new(()),
        });
        Self {
            shared,
            dir,
            vm: Some(vm),
            agent,
            spec,
            image_key,
            created_at: SystemTime::now(),
            memfs: std::sync::Mutex::new(None),
            detached: std::sync::atomic::AtomicBool::new(false),
            network: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn set_network(&self, network: Option<crate::network::SandboxNetwork>) {
        *self.network.lock().expect("network lock") = network;
    }

    /// Removes its network (the VM is gone or going: a pause, a failed
    /// resume); a resume makes a new one.
    fn release_network(&self) {
        drop(self.network.lock().expect("network lock").take());
    }

    /// Its egress policy while it has a network; `None` when it has no
    /// network card (or is paused: the policy is then in its spec).
    pub fn network_policy(&self) -> Option<warren_net::NetworkPolicy> {
        self.network
            .lock()
            .expect("network lock")
            .as_ref()
            .map(|n| n.policy().clone())
    }

    /// Replaces its egress policy while it runs: the kernel's rules in one
    /// transaction, then the record in its directory (so a resume and a
    /// restarted warren keep it). New connections follow the new policy;
    /// open ones stay open.
    pub fn set_network_policy(
        &self,
        policy: warren_net::NetworkPolicy,
    ) -> Result<(), crate::network::NetworkError> {
        let mut guard = self.network.lock().expect("network lock");
        let network = guard
            .as_mut()
            .ok_or(crate::network::NetworkError::NoNetwork)?;
        network.set_policy(policy.clone())?;
        crate::network::record_policy(&self.dir, &policy)
    }

    /// A TCP connection to `port` of the guest, made from inside its
    /// network namespace (how the port proxy reaches a server in it).
    pub async fn connect_port(
        &self,
        port: u16,
    ) -> Result<tokio::net::TcpStream, crate::network::NetworkError> {
        let net = self
            .network
            .lock()
            .expect("network lock")
            .as_ref()
            .map(|n| n.net().clone())
            .ok_or(crate::network::NetworkError::NoNetwork)?;
        let to = std::net::SocketAddr::from((warren_net::layout::guest::ADDRESS, port));
        net.connect_out(to)
            .await
            .map_err(crate::network::NetworkError::Net)
    }

    pub(crate) fn set_memfs(&self, memfs: crate::memfs::MemFs) {
        *self.memfs.lock().expect("memfs lock") = Some(memfs);
    }

    pub(crate) fn memfs_handle(&self) -> &std::sync::Mutex<Option<crate::memfs::MemFs>> {
        &self.memfs
    }

    /// From now on the directory belongs to the snapshot: dropping the
    /// handle must not remove it.
    pub(crate) fn mark_paused(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        self.release_network();
    }

    /// Whether this handle was paused (its VM is gone, its directory kept).
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// A resume that failed after its VM started: kill the VM and the
    /// memory daemon, drop this attempt's disk layer, keep the snapshot.
    pub(crate) async fn abandon_resume(&self) {
        self.mark_paused();
        let _ = self.vm().kill().await;
        if let Some(mut memfs) = self.memfs.lock().expect("memfs lock").take() {
            memfs.abort();
        }
        let _ = std::fs::remove_file(crate::dir::SandboxDir::new(&self.dir).disk());
    }

    /// Pid of the memory daemon of a resumed sandbox.
    pub fn memfs_pid(&self) -> Option<u32> {
        self.memfs
            .lock()
            .expect("memfs lock")
            .as_ref()
            .and_then(|m| m.pid())
    }

    /// Keeps a pause from starting until the returned hold is dropped (a
    /// pause waits a bounded time for holds, then goes ahead). For
    /// transfers whose answer has already begun when they are streamed, so
    /// a pause cannot cut them midway. Refused while a pause runs.
    pub fn hold_off_pause(&self) -> Result<PauseHold, crate::error::Unavailable> {
        if let Some(unavailable) = self.shared.unavailable() {
            return Err(unavailable);
        }
        self.shared
            .transfers
            .clone()
            .try_read_owned()
            .map(PauseHold)
            .map_err(|_| crate::error::Unavailable::Pausing {
                id: self.shared.id.clone(),
            })
    }

    pub(crate) fn shared(&self) -> &SandboxShared {
        &self.shared
    }

    /// Sets the guest clock unless the connection's handshake already did
    /// (saves a round trip on every boot and resume).
    pub(crate) async fn ensure_clock(&self) -> Result<(), ExecError> {
        if !self.agent.clock_set_by_link() {
            self.sync_clock().await?;
        }
        Ok(())
    }

    pub(crate) fn client(&self) -> AgentClient<tonic::transport::Channel> {
        self.agent.client()
    }

    pub(crate) fn open_bulk(&self) -> Option<warren_proto::bulk::BulkSender> {
        self.agent.open_bulk()
    }

    pub(crate) fn vm(&self) -> &dyn Vm {
        self.vm.as_deref().expect("vm present until drop")
    }

    /// The sandbox id (`sb-...`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// What it was created with.
    pub fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// Hash key of the image it runs.
    pub fn image_key(&self) -> &str {
        &self.image_key
    }

    /// When it became ready.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Its directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host pid of its VM process.
    pub fn vm_pid(&self) -> u32 {
        self.vm().pid()
    }

    /// Path of the guest's serial console log.
    pub fn console_log_path(&self) -> &Path {
        self.vm().console_log()
    }

    /// The guest console log so far (at most the last `max_bytes`).
    pub fn console_log(&self, max_bytes: u64) -> String {
        warren_vmm::process::tail_of(self.vm().console_log(), max_bytes)
    }

    /// Keeps the end of the console log (at most `max_bytes`) as
    /// `dir/<id>.log`, so it can be read after the sandbox is gone (its
    /// directory is removed with it). Written atomically.
    pub fn preserve_console_log(&self, dir: &Path, max_bytes: u64) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let target = dir.join(format!("{}.log", self.id()));
        let text = warren_vmm::process::tail_of(self.vm().console_log(), max_bytes);
        write_atomic(&target, text.as_bytes())?;
        Ok(target)
    }

    /// Host memory used by the VM process (RSS and PSS).
    pub fn host_memory(&self) -> Option<ProcessMemory> {
        process_memory(self.vm_pid())
    }

    /// `Some` once the VM has exited; the sandbox is then unusable.
    pub fn vm_exit(&self) -> Option<warren_vmm::VmExit> {
        self.vm().exit()
    }

    /// Asks the agent about the guest.
    pub async fn info(&self) -> Result<GuestInfo, ExecError> {
        self.ensure_usable()?;
        match self.client().info(pb::InfoRequest {}).await {
            Ok(response) => Ok(response.into_inner().into()),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Sets the guest clock to the host's. Returns the previous offset.
    pub async fn sync_clock(&self) -> Result<Duration, ExecError> {
        self.ensure_usable()?;
        let request = pb::SetClockRequest {
            unix_time_ns: warren_proto::unix_time_ns(),
        };
        match self.client().set_clock(request).await {
            Ok(response) => Ok(Duration::from_nanos(
                response.into_inner().previous_offset_ns.unsigned_abs(),
            )),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Gives a clone its own host name and reseeds its random generator
    /// with host randomness, in one call. `Ok(false)` when the guest agent
    /// predates this call (the caller then falls back to a shell command).
    pub(crate) async fn set_identity(&self, hostname: &str) -> Result<bool, ExecError> {
        self.ensure_usable()?;
        let request = pb::SetIdentityRequest {
            hostname: hostname.to_string(),
            entropy: rand::random::<[u8; 64]>().to_vec().into(),
        };
        match self.client().set_identity(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(false),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    fn ensure_usable(&self) -> Result<(), ExecError> {
        match self.shared.unavailable() {
            Some(unavailable) => Err(ExecError::Unavailable(unavailable)),
            None => Ok(()),
        }
    }

    /// Starts a process and returns once it runs.
    pub async fn exec(&self, command: Command) -> Result<Process, ExecError> {
        command.validate()?;
        self.ensure_usable()?;
        let start = command.to_start(&self.spec.env);
        Process::start(self.client(), self.shared.clone(), start).await
    }

    /// Runs a process to completion and collects its output.
    pub async fn run(&self, command: Command) -> Result<Output, ExecError> {
        self.exec(command).await?.wait_with_output().await
    }

    /// Processes the agent knows about.
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, ExecError> {
        self.ensure_usable()?;
        match self
            .client()
            .list_processes(pb::ListProcessesRequest {})
            .await
        {
            Ok(response) => Ok(response
                .into_inner()
                .processes
                .into_iter()
                .map(ProcessInfo::from)
                .collect()),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Re-attaches to a process (running or exited in the background);
    /// `replay` first delivers its buffered output.
    pub async fn attach(&self, pid: u32, replay: bool) -> Result<Process, ExecError> {
        self.ensure_usable()?;
        match self
            .client()
            .attach(pb::AttachRequest { pid, replay })
            .await
        {
            Ok(response) => Ok(Process::attached(
                pid,
                response.into_inner(),
                self.shared.clone(),
            )),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Writes to a process's stdin by pid (and optionally closes it).
    pub async fn send_input(
        &self,
        pid: u32,
        data: impl Into<bytes::Bytes>,
        close: bool,
    ) -> Result<(), ExecError> {
        self.ensure_usable()?;
        let request = pb::SendInputRequest {
            pid,
            data: data.into(),
            close,
        };
        match self.client().send_input(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Sends a signal to a process's group by pid.
    pub async fn signal(&self, pid: u32, signal: i32) -> Result<(), ExecError> {
        self.ensure_usable()?;
        match self
            .client()
            .signal(pb::SignalRequest { pid, signal })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Resizes a process's terminal by pid.
    pub async fn resize_pty(&self, pid: u32, rows: u16, cols: u16) -> Result<(), ExecError> {
        self.ensure_usable()?;
        let request = pb::ResizePtyRequest {
            pid,
            size: Some(pb::PtySize {
                rows: rows.into(),
                cols: cols.into(),
            }),
        };
        match self.client().resize_pty(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Flushes guest filesystems (optionally dropping caches).
    pub async fn sync_filesystems(&self, drop_caches: bool) -> Result<(), ExecError> {
        self.ensure_usable()?;
        match self.client().sync(pb::SyncRequest { drop_caches }).await {
            Ok(_) => Ok(()),
            Err(status) => Err(status_to_exec_error_sync(&self.shared, status)
                .resolve()
                .await),
        }
    }

    /// Raw guest → host throughput of the agent channel (benchmarks).
    #[cfg(feature = "bench")]
    pub async fn raw_download(&self, bytes: u64) -> Result<RawThroughput, LinkError> {
        self.agent.raw_download(bytes).await
    }

    /// Raw host → guest throughput of the agent channel (benchmarks).
    #[cfg(feature = "bench")]
    pub async fn raw_upload(&self, bytes: u64) -> Result<RawThroughput, LinkError> {
        self.agent.raw_upload(bytes).await
    }

    /// Link-level round trip to the agent (benchmarks, health).
    #[cfg(feature = "bench")]
    pub async fn ping(&self) -> Result<Duration, LinkError> {
        self.agent.ping().await
    }

    /// Kills the VM through a shared handle (other tasks may still hold
    /// the sandbox; their calls fail with "destroyed"). The directory is
    /// removed when the last handle is dropped.
    pub async fn kill(&self) -> Result<(), DestroyError> {
        self.shared.destroyed.store(true, Ordering::SeqCst);
        self.vm().kill().await?;
        Ok(())
    }

    /// Watch that turns `Some` when the VM exits for any reason.
    pub fn vm_exit_watch(&self) -> tokio::sync::watch::Receiver<Option<warren_vmm::VmExit>> {
        self.vm().exit_watch()
    }

    /// Lets the VM (and its memory daemon) run on without this process:
    /// `warren up` stopping with `--on-shutdown keep`. The next warren
    /// re-attaches it from its directory.
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
        if let Some(network) = self.network.lock().expect("network lock").take() {
            network.leave_running();
        }
        self.vm().detach();
        if let Some(memfs) = self.memfs.lock().expect("memfs lock").as_mut() {
            memfs.detach();
        }
    }

    /// Kills the VM and removes the sandbox directory.
    pub async fn destroy(mut self) -> Result<(), DestroyError> {
        self.shared.destroyed.store(true, Ordering::SeqCst);
        let vm = self.vm.take().expect("vm present until destroy");
        let killed = vm.kill().await;
        drop(vm);
        if let Some(mut memfs) = self.memfs.lock().expect("memfs lock").take() {
            memfs.abort();
        }
        let removed = if self.is_paused() {
            Ok(())
        } else {
            remove_dir(&self.dir)
        };
        killed?;
        removed
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.detached.load(Ordering::SeqCst) {
            return;
        }
        if let Some(vm) = self.vm.take() {
            self.shared.destroyed.store(true, Ordering::SeqCst);
            // QemuVm's Drop kills and reaps the process synchronously.
            drop(vm);
            if let Some(mut memfs) = self.memfs.lock().expect("memfs lock").take() {
                memfs.abort();
            }
            if !self.is_paused() {
                let _ = remove_dir(&self.dir);
            }
        }
    }
}

/// Removes a sandbox directory (`<data>/sandboxes/<id>`) through its data
/// directory's trash ([`DataDir::trash`]), so a crash midway never leaves a
/// half-deleted sandbox.
fn remove_dir(dir: &Path) -> Result<(), DestroyError> {
    let data = dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    DataDir::new(data)
        .trash(dir)
        .map_err(|source| DestroyError::Cleanup {
            path: dir.to_path_buf(),
            source,
        })
}
