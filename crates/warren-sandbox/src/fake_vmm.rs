//! A FAKE [`Vmm`] standing in for QEMU in this crate's unit tests only.
//!
//! It runs nothing: its "running VMs" are entries a test puts in
//! [`FakeVmm::state`], it records every process it is asked to end, and it
//! refuses to launch or attach (so a re-attach always fails, as it does
//! for a VM that no longer answers). That is enough to test the decisions
//! of crash recovery and the reconciler (what is ended, kept, quarantined,
//! falls back to its snapshot) without booting a VM; the real-VM tests in
//! `tests/` cover the QEMU backend itself. Never use it outside `#[cfg(test)]`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use warren_vmm::{Accel, LaunchError, Vm, VmConfig, VmProcess, Vmm};

/// What the fake believes runs, and what it was asked to do.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    /// VMs whose pid file "names a live process": (directory, id, pid).
    pub(crate) running: Vec<(PathBuf, String, u32)>,
    /// What [`Vmm::live_vms`] reports (the host's process table).
    pub(crate) live: Vec<VmProcess>,
    /// Every pid [`Vmm::kill_process`] was called with, in order.
    pub(crate) killed: Vec<u32>,
}

/// The fake backend; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct FakeVmm {
    pub(crate) state: Mutex<FakeState>,
}

impl FakeVmm {
    /// Pretends that the VM of sandbox `id` in `dir` runs as `pid`, both
    /// behind its pid file and in the host's process table.
    pub(crate) fn run(&self, dir: &Path, id: &str, pid: u32) {
        let mut state = self.state.lock().unwrap();
        state.running.push((dir.to_path_buf(), id.to_string(), pid));
        state.live.push(VmProcess {
            pid,
            id: id.to_string(),
            cmdline: format!(
                "qemu-system-x86_64 -name warren-{id} -chardev socket,path={}/qmp.sock",
                dir.display()
            ),
        });
    }

    /// The pids ended so far.
    pub(crate) fn killed(&self) -> Vec<u32> {
        self.state.lock().unwrap().killed.clone()
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn accel(&self) -> Accel {
        Accel::Tcg
    }

    async fn launch(&self, config: VmConfig) -> Result<Box<dyn Vm>, LaunchError> {
        Err(LaunchError::NotRunning {
            id: config.id,
            detail: "the fake VMM launches nothing".into(),
        })
    }

    async fn attach(&self, config: VmConfig) -> Result<Box<dyn Vm>, LaunchError> {
        Err(LaunchError::NotRunning {
            id: config.id,
            detail: "the fake VMM cannot take over a VM".into(),
        })
    }

    fn running_pid(&self, dir: &Path, id: &str) -> Option<u32> {
        let state = self.state.lock().unwrap();
        state
            .running
            .iter()
            .find(|(d, i, _)| d == dir && i == id)
            .map(|(_, _, pid)| *pid)
    }

    fn live_vms(&self) -> Vec<VmProcess> {
        self.state.lock().unwrap().live.clone()
    }

    fn kill_process(&self, pid: u32) -> bool {
        let mut state = self.state.lock().unwrap();
        state.killed.push(pid);
        state.running.retain(|(_, _, p)| *p != pid);
        state.live.retain(|p| p.pid != pid);
        true
    }

    fn sweep_memory(&self, _dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }

    fn restore_kernel(&self, kernel: &Path, _dir: &Path) -> std::io::Result<PathBuf> {
        Ok(kernel.to_path_buf())
    }
}
