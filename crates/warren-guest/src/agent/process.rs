//! The process table: every process the agent started, with its output
//! ring, stdin, terminal and exit status, so that callers can list,
//! re-attach to, feed and signal processes across connections.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use warren_proto::pb;

use super::fdio::FdIo;
use super::ring::{OutKind, OutputRing};
use crate::errors::ExecError;

/// Output kept per process for re-attaching.
pub const RING_BYTES: usize = 1024 * 1024;
/// Exited background records kept for ListProcesses/Attach.
pub const MAX_EXITED: usize = 256;
/// Output bytes kept across all exited records (so 256 chatty processes
/// cannot pin 256 MiB of a small VM's memory).
pub const MAX_EXITED_OUTPUT: usize = 64 * 1024 * 1024;
/// Stdin bytes accepted but not yet written to the process; beyond this,
/// senders wait (backpressure to the host).
pub const STDIN_BUDGET: usize = 1024 * 1024;
/// Most bytes a follower takes from the ring per step.
const FOLLOW_BATCH: usize = 1024 * 1024;

/// A request to the stdin writer task.
#[derive(Debug)]
pub enum StdinOp {
    /// Bytes to write; the permit is the bytes' share of the budget and is
    /// released once they are written.
    Data(Bytes, OwnedSemaphorePermit),
    /// End of input.
    Close,
}

/// The sending side of a process's stdin.
#[derive(Debug, Clone)]
pub struct StdinHandle {
    tx: mpsc::UnboundedSender<StdinOp>,
    budget: Arc<Semaphore>,
}

impl StdinHandle {
    /// A handle and the receiver its writer task consumes.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<StdinOp>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tx,
                budget: Arc::new(Semaphore::new(STDIN_BUDGET)),
            },
            rx,
        )
    }

    /// Queues bytes, waiting while more than [`STDIN_BUDGET`] are queued.
    /// Every operation costs at least one permit so that even a flood of
    /// empty messages is bounded.
    async fn send(&self, data: Bytes) -> Result<(), ()> {
        let cost = data.len().clamp(1, STDIN_BUDGET) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(drop)?;
        self.tx.send(StdinOp::Data(data, permit)).map_err(drop)
    }
}

/// Writes queued stdin to the process. For a pipe, `Close` closes it; for
/// a terminal, `Close` sends the EOF character (^D), because closing the
/// master would hang up the whole session.
pub async fn stdin_writer(io: Arc<FdIo>, mut rx: mpsc::UnboundedReceiver<StdinOp>, pty: bool) {
    let mut broken = false;
    while let Some(op) = rx.recv().await {
        match op {
            StdinOp::Data(data, _permit) => {
                if broken {
                    continue;
                }
                if let Err(error) = io.write_all(&data).await {
                    // The process closed its stdin; drop further input.
                    tracing::debug!(%error, "stdin write failed");
                    broken = true;
                }
            }
            StdinOp::Close if pty => {
                let _ = io.write_all(&[0x04]).await;
            }
            StdinOp::Close => break,
        }
    }
}

/// Mutable state of a process record.
#[derive(Debug)]
struct ProcState {
    ring: OutputRing,
    /// Set once the process was reaped and its output drained.
    exited: Option<pb::ExecExited>,
    /// Set as soon as the process was reaped: its pid may be reused from
    /// then on, so no signal may be sent to it any more.
    reaped: bool,
    stdin: Option<StdinHandle>,
    /// Whether the process was given a stdin at all (for messages).
    had_stdin: bool,
    pty: Option<Arc<FdIo>>,
}

/// One process started by the agent.
#[derive(Debug)]
pub struct Proc {
    /// Its pid, also its process group id (and session id with a PTY).
    pub pid: u32,
    /// What was run.
    pub argv: Vec<String>,
    /// Caller's label.
    pub tag: String,
    /// Keeps running when its Exec stream ends.
    pub background: bool,
    /// Runs on a terminal.
    pub has_pty: bool,
    /// Wall clock at start.
    pub started_unix_ms: i64,
    state: Mutex<ProcState>,
    /// Bumped on every output chunk and at exit; followers wait on it.
    version: watch::Sender<u64>,
}

/// Everything needed to create a [`Proc`].
#[derive(Debug)]
pub struct ProcInit {
    /// Pid of the spawned process.
    pub pid: u32,
    /// Its argv.
    pub argv: Vec<String>,
    /// Caller's label.
    pub tag: String,
    /// Background flag.
    pub background: bool,
    /// The stdin handle, if it has a stdin.
    pub stdin: Option<StdinHandle>,
    /// The terminal master, if it runs on one.
    pub pty: Option<Arc<FdIo>>,
}

impl Proc {
    /// A record for a freshly spawned process.
    pub fn new(init: ProcInit) -> Self {
        let now = i64::try_from(warren_proto::unix_time_ms()).unwrap_or(i64::MAX);
        Self {
            pid: init.pid,
            argv: init.argv,
            tag: init.tag,
            background: init.background,
            has_pty: init.pty.is_some(),
            started_unix_ms: now,
            state: Mutex::new(ProcState {
                ring: OutputRing::new(RING_BYTES),
                exited: None,
                reaped: false,
                had_stdin: init.stdin.is_some(),
                stdin: init.stdin,
                pty: init.pty,
            }),
            version: watch::channel(0).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, ProcState> {
        // A panic while holding the lock leaves consistent data (every
        // critical section is a few field updates), so poisoning is moot.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records output for followers.
    pub fn push_output(&self, kind: OutKind, data: Bytes) {
        self.state().ring.push(kind, data);
        self.version.send_modify(|v| *v += 1);
    }

    /// Notes that the process was reaped (no more signals to its pid).
    pub fn mark_reaped(&self) {
        let mut state = self.state();
        state.reaped = true;
        // Nobody can read the input any more; stop accepting it.
        state.stdin = None;
    }

    /// Publishes the exit status once the output is drained, releasing
    /// the terminal.
    pub fn finish(&self, exited: pb::ExecExited) {
        {
            let mut state = self.state();
            state.exited = Some(exited);
            state.reaped = true;
            state.stdin = None;
            state.pty = None;
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// The exit status, if the process has exited.
    pub fn exited(&self) -> Option<pb::ExecExited> {
        self.state().exited
    }

    /// Output bytes retained (for the table's memory bound).
    pub fn retained_output(&self) -> usize {
        self.state().ring.retained()
    }

    /// Waits until the exit status is published.
    pub async fn wait_exited(&self) {
        let mut rx = self.version.subscribe();
        loop {
            if self.state().exited.is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Sends `signal` to the process group (and, for SIGKILL on a
    /// terminal, to every process of its session, since an interactive
    /// shell puts its jobs in their own groups).
    pub fn signal_group(&self, signal: i32) -> Result<(), ExecError> {
        {
            let state = self.state();
            self.signal_group_locked(&state, signal)?;
        }
        if self.has_pty && signal == libc::SIGKILL {
            for member in session_members(self.pid as i32) {
                // SAFETY: plain kill(2) of a process in the session.
                unsafe { libc::kill(member, libc::SIGKILL) };
            }
        }
        Ok(())
    }

    /// Signals the group while the caller holds the state lock, so the
    /// check that the pid is not reaped (and so not reused) stays true.
    fn signal_group_locked(&self, state: &ProcState, signal: i32) -> Result<(), ExecError> {
        if state.reaped {
            return Err(ExecError::Precondition(format!(
                "process {} has already exited",
                self.pid
            )));
        }
        // SAFETY: kill(2) with a negative pid signals the group; the pid is
        // ours and not yet reaped (checked under the lock above).
        let rc = unsafe { libc::kill(-(self.pid as i32), signal) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            // ESRCH: the group is already gone (leader exiting).
            if error.raw_os_error() != Some(libc::ESRCH) {
                return Err(ExecError::Precondition(format!(
                    "signalling process group {}: {error}",
                    self.pid
                )));
            }
        }
        Ok(())
    }

    /// Kills the whole group unless already reaped; true if it was sent.
    pub fn kill(&self) -> bool {
        self.signal_group(libc::SIGKILL).is_ok()
    }

    fn stdin_handle(&self) -> Result<StdinHandle, ExecError> {
        let state = self.state();
        if state.reaped {
            return Err(ExecError::Precondition(format!(
                "process {} has already exited",
                self.pid
            )));
        }
        state.stdin.clone().ok_or_else(|| {
            ExecError::Precondition(if state.had_stdin {
                format!("the stdin of process {} was closed", self.pid)
            } else {
                format!(
                    "process {} has no stdin; start it with stdin: true or a pty",
                    self.pid
                )
            })
        })
    }

    /// Writes to the process's stdin (waiting while the budget is used up).
    pub async fn write_stdin(&self, data: Bytes) -> Result<(), ExecError> {
        let handle = self.stdin_handle()?;
        if data.is_empty() {
            return Ok(());
        }
        handle.send(data).await.map_err(|()| {
            ExecError::Precondition(format!("the stdin of process {} was closed", self.pid))
        })
    }

    /// Closes the process's stdin (after queued data is written).
    pub fn close_stdin(&self) -> Result<(), ExecError> {
        let handle = self.stdin_handle()?;
        let _ = handle.tx.send(StdinOp::Close);
        if !self.has_pty {
            self.state().stdin = None;
        }
        Ok(())
    }

    /// Resizes the process's terminal.
    pub fn resize(&self, size: &pb::PtySize) -> Result<(), ExecError> {
        let state = self.state();
        if !self.has_pty {
            return Err(ExecError::Precondition(format!(
                "process {} has no terminal; start it with a pty to resize it",
                self.pid
            )));
        }
        let Some(pty) = state.pty.as_ref().filter(|_| !state.reaped) else {
            return Err(ExecError::Precondition(format!(
                "process {} has already exited",
                self.pid
            )));
        };
        super::pty::resize(pty.raw_fd(), size).map_err(|error| {
            ExecError::Precondition(format!("resizing the terminal of {}: {error}", self.pid))
        })
    }

    /// The listing entry.
    pub fn info(&self) -> pb::ProcessInfo {
        pb::ProcessInfo {
            pid: self.pid,
            argv: self.argv.clone(),
            tag: self.tag.clone(),
            background: self.background,
            pty: self.has_pty,
            exited: self.exited(),
            started_unix_ms: self.started_unix_ms,
        }
    }
}

/// Streams a process's output from its ring to `tx`, then its exit.
///
/// With `replay` it starts at the oldest retained byte (bytes evicted
/// before count as dropped), else at the live end. A follower that cannot
/// keep up loses the oldest output, counted in `dropped_bytes` of the
/// final `exited`. Returns true if it delivered the exit.
pub async fn follow(
    proc: Arc<Proc>,
    tx: mpsc::Sender<Result<pb::ExecEvent, tonic::Status>>,
    replay: bool,
) -> bool {
    let mut version = proc.version.subscribe();
    let mut offset = if replay { 0 } else { proc.state().ring.end() };
    let mut dropped = 0u64;
    loop {
        version.borrow_and_update();
        let (read, exited) = {
            let state = proc.state();
            (state.ring.read_from(offset, FOLLOW_BATCH), state.exited)
        };
        dropped += read.skipped;
        offset = read.next;
        if read.chunks.is_empty() {
            if let Some(mut exited) = exited {
                exited.dropped_bytes = dropped;
                return tx.send(Ok(exit_event(exited))).await.is_ok();
            }
            tokio::select! {
                changed = version.changed() => if changed.is_err() { return false },
                _ = tx.closed() => return false,
            }
            continue;
        }
        for chunk in read.chunks {
            if tx
                .send(Ok(output_event(chunk.kind, chunk.data)))
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

/// An output event.
pub fn output_event(kind: OutKind, data: Bytes) -> pb::ExecEvent {
    let event = match kind {
        OutKind::Stdout => pb::exec_event::Event::Stdout(data),
        OutKind::Stderr => pb::exec_event::Event::Stderr(data),
    };
    pb::ExecEvent { event: Some(event) }
}

/// An exit event.
pub fn exit_event(exited: pb::ExecExited) -> pb::ExecEvent {
    pb::ExecEvent {
        event: Some(pb::exec_event::Event::Exited(exited)),
    }
}

/// Table of processes by pid.
#[derive(Debug, Default)]
pub struct ProcessTable {
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
/// The table's data, behind one lock.
struct TableInner {
    procs: HashMap<u32, Arc<Proc>>,
    /// Pids of exited background records, oldest first.
    exited: VecDeque<u32>,
}

impl ProcessTable {
    fn inner(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new process; an old exited record with the same
    /// (reused) pid is dropped.
    pub fn insert(&self, proc: Arc<Proc>) {
        let mut inner = self.inner();
        inner.exited.retain(|pid| *pid != proc.pid);
        inner.procs.insert(proc.pid, proc);
    }

    /// The record of `pid`.
    pub fn get(&self, pid: u32) -> Result<Arc<Proc>, ExecError> {
        self.inner()
            .procs
            .get(&pid)
            .cloned()
            .ok_or(ExecError::UnknownPid(pid))
    }

    /// Called when a process has exited: foreground records go at once,
    /// background ones are kept (bounded) for Attach and ListProcesses.
    pub fn on_exit(&self, proc: &Arc<Proc>) {
        let mut inner = self.inner();
        if !proc.background {
            remove_if_same(&mut inner, proc);
            return;
        }
        if !inner
            .procs
            .get(&proc.pid)
            .is_some_and(|p| Arc::ptr_eq(p, proc))
        {
            return;
        }
        inner.exited.push_back(proc.pid);
        loop {
            let total: usize = inner
                .exited
                .iter()
                .filter_map(|pid| inner.procs.get(pid))
                .map(|p| p.retained_output())
                .sum();
            if inner.exited.len() <= MAX_EXITED && total <= MAX_EXITED_OUTPUT {
                break;
            }
            let Some(oldest) = inner.exited.pop_front() else {
                break;
            };
            inner.procs.remove(&oldest);
        }
    }

    /// Forgets an exited record whose exit a caller has seen.
    pub fn reap(&self, proc: &Arc<Proc>) {
        if proc.exited().is_none() {
            return;
        }
        let mut inner = self.inner();
        if remove_if_same(&mut inner, proc) {
            inner.exited.retain(|pid| *pid != proc.pid);
        }
    }

    /// Running processes and retained exited ones, by pid.
    pub fn list(&self) -> Vec<pb::ProcessInfo> {
        let procs: Vec<Arc<Proc>> = self.inner().procs.values().cloned().collect();
        let mut infos: Vec<_> = procs.iter().map(|p| p.info()).collect();
        infos.sort_by_key(|p| p.pid);
        infos
    }
}

fn remove_if_same(inner: &mut TableInner, proc: &Arc<Proc>) -> bool {
    if inner
        .procs
        .get(&proc.pid)
        .is_some_and(|p| Arc::ptr_eq(p, proc))
    {
        inner.procs.remove(&proc.pid);
        true
    } else {
        false
    }
}

/// Session id from the text of `/proc/PID/stat` (field 6; the command name
/// in field 2 may contain spaces and parentheses, so parse after the last
/// `)`).
fn stat_session(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Pids of every process in session `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_session(&s))
                == Some(sid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, background: bool) -> Arc<Proc> {
        Arc::new(Proc::new(ProcInit {
            pid,
            argv: vec!["x".into()],
            tag: String::new(),
            background,
            stdin: None,
            pty: None,
        }))
    }

    fn exit(proc: &Proc) {
        proc.finish(pb::ExecExited {
            exit_code: Some(0),
            ..Default::default()
        });
    }

    #[test]
    fn parses_session_from_stat() {
        let stat = "1234 (a (weird) name) S 1 1234 1200 34816 1234 4194560 0 0";
        assert_eq!(stat_session(stat), Some(1200));
        assert_eq!(stat_session("garbage"), None);
    }

    #[test]
    fn keeps_bounded_exited_background_records() {
        let table = ProcessTable::default();
        for pid in 1..=(MAX_EXITED as u32 + 10) {
            let proc = record(pid, true);
            table.insert(proc.clone());
            exit(&proc);
            table.on_exit(&proc);
        }
        let list = table.list();
        assert_eq!(list.len(), MAX_EXITED);
        assert_eq!(list[0].pid, 11);
        // Foreground records leave at exit.
        let fg = record(100_000, false);
        table.insert(fg.clone());
        assert!(table.get(100_000).is_ok());
        exit(&fg);
        table.on_exit(&fg);
        assert!(table.get(100_000).is_err());
    }

    #[test]
    fn reaps_and_replaces_reused_pids() {
        let table = ProcessTable::default();
        let old = record(7, true);
        table.insert(old.clone());
        exit(&old);
        table.on_exit(&old);
        let new = record(7, true);
        table.insert(new.clone());
        // Reaping the old record must not remove the new one.
        table.reap(&old);
        assert!(Arc::ptr_eq(&table.get(7).unwrap(), &new));
        exit(&new);
        table.on_exit(&new);
        table.reap(&new);
        assert!(table.get(7).is_err());
    }

    #[test]
    fn refuses_signals_and_input_after_exit() {
        let proc = record(999_999, true);
        exit(&proc);
        assert!(matches!(
            proc.signal_group(libc::SIGTERM),
            Err(ExecError::Precondition(_))
        ));
        assert!(matches!(
            proc.close_stdin(),
            Err(ExecError::Precondition(_))
        ));
    }

    #[tokio::test]
    async fn followers_replay_and_count_drops() {
        let proc = record(5, true);
        proc.push_output(OutKind::Stdout, Bytes::from_static(b"hello "));
        proc.push_output(OutKind::Stderr, Bytes::from_static(b"world"));
        let (tx, mut rx) = mpsc::channel(16);
        let follower = tokio::spawn(follow(proc.clone(), tx, true));
        exit(&proc);
        assert!(follower.await.unwrap());
        let mut text = String::new();
        while let Some(Ok(event)) = rx.recv().await {
            match event.event.unwrap() {
                pb::exec_event::Event::Stdout(b) | pb::exec_event::Event::Stderr(b) => {
                    text.push_str(std::str::from_utf8(&b).unwrap())
                }
                pb::exec_event::Event::Exited(e) => assert_eq!(e.dropped_bytes, 0),
                pb::exec_event::Event::Started(_) => unreachable!(),
            }
        }
        assert_eq!(text, "hello world");
    }
}
