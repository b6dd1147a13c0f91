//! The gRPC service: maps each RPC of `proto/agent.proto` onto the
//! modules that do the work, and owns the per-RPC stream plumbing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use warren_proto::link::LinkInfo;
use warren_proto::pb;
use warren_proto::pb::agent_server::Agent;

use super::exec;
use super::files::{self, WriteMsg};
use super::process::{Proc, ProcessTable, follow};
use super::system::{self, ShutdownMode};
use crate::errors::ExecError;
use crate::users::UserCache;

/// Events buffered per Exec/Attach stream before producers wait.
const EVENT_QUEUE: usize = 16;
/// Delay between answering Shutdown and acting on it, so the answer
/// reaches the host.
const SHUTDOWN_DELAY: Duration = Duration::from_millis(50);

/// State shared by every connection.
#[derive(Debug)]
pub struct AgentService {
    users: Arc<UserCache>,
    procs: Arc<ProcessTable>,
    shutdown: ShutdownMode,
}

impl AgentService {
    /// WriteFile whose bytes come as link frames (warren_proto::bulk): the
    /// link's reader thread writes them straight into the file through a
    /// sink; the call carries the header, the end marker and the answer.
    async fn write_file_bulk(
        &self,
        header: pb::WriteFileHeader,
        link: Option<LinkInfo>,
        mut chunks: Streaming<pb::WriteFileChunk>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        use pb::write_file_chunk::Chunk;
        let Some(LinkInfo {
            epoch,
            bulk: Some(port),
        }) = link
        else {
            return Err(Status::failed_precondition(
                "this connection cannot carry bulk uploads; send the data in the call",
            ));
        };
        let id = header.bulk_transfer;
        let users = self.users.snapshot();
        let open = files::begin_write(header, users.clone()).await?;
        let path = open.path().to_string();
        let failure: Arc<std::sync::Mutex<Option<std::io::Error>>> = Arc::default();
        let failed = Arc::new(tokio::sync::Notify::new());
        let sink = {
            let file = open.file();
            let failure = failure.clone();
            let failed = failed.clone();
            Box::new(
                move |bytes: &[u8]| match std::io::Write::write_all(&mut &*file, bytes) {
                    Ok(()) => true,
                    Err(error) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                        failed.notify_one();
                        false
                    }
                },
            )
        };
        let transfer = port
            .open(epoch, id, sink)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e}; the file was not changed")))?;
        let write_error = || {
            let error = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
            let error = error.unwrap_or_else(|| std::io::Error::other("the upload failed"));
            Status::from(crate::errors::FileError::io("writing", &path, error))
        };
        // Dropping `open` (any early return) removes the temp file.
        loop {
            let message = tokio::select! {
                message = chunks.message() => message,
                () = failed.notified() => return Err(write_error()),
            };
            match message {
                Ok(Some(pb::WriteFileChunk {
                    chunk: Some(Chunk::End(end)),
                })) => {
                    // Every frame sent before the end marker went through
                    // the sink already (one ordered link).
                    let taken = transfer.taken();
                    drop(transfer);
                    let Some(taken) = taken else {
                        return Err(write_error());
                    };
                    if end.total_bytes != taken {
                        return Err(Status::data_loss(format!(
                            "the upload ended after {taken} bytes but the sender sent {}; \
                             the file was not changed",
                            end.total_bytes
                        )));
                    }
                    let response = files::blocking(move || {
                        files::commit_write(open, taken, &users).map_err(Status::from)
                    })
                    .await?;
                    return Ok(Response::new(response));
                }
                Ok(Some(pb::WriteFileChunk {
                    chunk: Some(Chunk::Data(_) | Chunk::Header(_)),
                })) => {
                    return Err(Status::invalid_argument(
                        "a bulk upload takes no header or data messages after its header; \
                         the file was not changed",
                    ));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Status::cancelled(format!(
                        "the upload of {path} was cancelled before it finished; the file \
                         was not changed"
                    )));
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// A service reading users from `root` (`/` in production).
    pub fn new(shutdown: ShutdownMode) -> Self {
        Self {
            users: Arc::new(UserCache::new("/")),
            procs: Arc::new(ProcessTable::default()),
            shutdown,
        }
    }
}

type EventStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

/// What a signal number must be to be sent.
fn check_signal(signal: i32) -> Result<(), Status> {
    if (1..=64).contains(&signal) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "signal {signal} is not a valid signal number (1-64, e.g. 15 for SIGTERM)"
        )))
    }
}

/// Applies one input of an Exec stream. Errors cannot be returned on the
/// stream without ending it, so they are logged and the input is dropped.
async fn apply_input(proc: &Proc, input: pb::exec_input::Input) {
    use pb::exec_input::Input;
    let result = match input {
        Input::Start(_) => Err(ExecError::Invalid(
            "a second start message was ignored".into(),
        )),
        Input::Stdin(data) => proc.write_stdin(data).await,
        Input::CloseStdin(_) => proc.close_stdin(),
        Input::Resize(size) => proc.resize(&size),
        Input::Signal(signal) => match check_signal(signal) {
            Ok(()) => proc.signal_group(signal),
            Err(status) => Err(ExecError::Invalid(status.message().to_string())),
        },
    };
    if let Err(error) = result {
        tracing::debug!(pid = proc.pid, %error, "exec input dropped");
    }
}

/// Reads the inputs of an Exec stream until the process exits, killing a
/// foreground process whose caller went away.
async fn drive_exec(
    proc: Arc<Proc>,
    mut inputs: Streaming<pb::ExecInput>,
    events: mpsc::Sender<Result<pb::ExecEvent, Status>>,
) {
    let background = proc.background;
    let cancel = |why: &str| {
        if !background {
            tracing::debug!(pid = proc.pid, why, "killing foreground process");
            proc.kill();
        }
    };
    let mut inputs_open = true;
    loop {
        tokio::select! {
            message = inputs.message(), if inputs_open => match message {
                Ok(Some(pb::ExecInput { input: Some(input) })) => {
                    tokio::select! {
                        () = apply_input(&proc, input) => {}
                        () = events.closed() => { cancel("caller went away"); return; }
                        () = proc.wait_exited() => return,
                    }
                }
                Ok(Some(_)) => {}
                // Half-close: the caller sends nothing more but still reads.
                Ok(None) => inputs_open = false,
                Err(status) => {
                    inputs_open = false;
                    cancel(status.message());
                }
            },
            () = events.closed() => { cancel("caller went away"); return; }
            () = proc.wait_exited() => return,
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(system::info()))
    }

    async fn set_clock(
        &self,
        request: Request<pb::SetClockRequest>,
    ) -> Result<Response<pb::SetClockResponse>, Status> {
        let previous_offset_ns = system::set_clock(request.into_inner().unix_time_ns)?;
        Ok(Response::new(pb::SetClockResponse { previous_offset_ns }))
    }

    async fn set_identity(
        &self,
        request: Request<pb::SetIdentityRequest>,
    ) -> Result<Response<pb::SetIdentityResponse>, Status> {
        let request = request.into_inner();
        files::blocking(move || system::set_identity(&request)).await?;
        Ok(Response::new(pb::SetIdentityResponse {}))
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let drop_caches = request.into_inner().drop_caches;
        files::blocking(move || system::sync(drop_caches)).await?;
        Ok(Response::new(pb::SyncResponse {}))
    }

    async fn shutdown(
        &self,
        _request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let mode = self.shutdown;
        tokio::spawn(async move {
            tokio::time::sleep(SHUTDOWN_DELAY).await;
            let _ = tokio::task::spawn_blocking(move || system::shutdown(mode)).await;
        });
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    type ExecStream = EventStream;

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut inputs = request.into_inner();
        let start = match inputs.message().await? {
            Some(pb::ExecInput {
                input: Some(pb::exec_input::Input::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first Exec message must be `start`",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "the Exec stream ended before its `start` message",
                ));
            }
        };
        let users = self.users.snapshot();
        let spec = exec::prepare(start, &users)?;
        let background = spec.background;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let primary = (!background).then(|| tx.clone());
        let started = exec::spawn(spec, self.procs.clone(), primary)?;
        // The started event goes first: it is queued before the tasks that
        // send output run (the queue is empty, so this cannot fail).
        let _ = tx.try_send(Ok(pb::ExecEvent {
            event: Some(pb::exec_event::Event::Started(pb::ExecStarted {
                pid: started.proc.pid,
            })),
        }));
        let proc = started.run();
        if background {
            let (procs, follower_proc, follower_tx) =
                (self.procs.clone(), proc.clone(), tx.clone());
            tokio::spawn(async move {
                if follow(follower_proc.clone(), follower_tx, true).await {
                    procs.reap(&follower_proc);
                }
            });
        }
        tokio::spawn(drive_exec(proc, inputs, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_processes(
        &self,
        _request: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        Ok(Response::new(pb::ListProcessesResponse {
            processes: self.procs.list(),
        }))
    }

    type AttachStream = EventStream;

    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let request = request.into_inner();
        let proc = self.procs.get(request.pid)?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let procs = self.procs.clone();
        tokio::spawn(async move {
            if follow(proc.clone(), tx, request.replay).await {
                procs.reap(&proc);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn send_input(
        &self,
        request: Request<pb::SendInputRequest>,
    ) -> Result<Response<pb::SendInputResponse>, Status> {
        let request = request.into_inner();
        let proc = self.procs.get(request.pid)?;
        proc.write_stdin(request.data).await?;
        if request.close {
            proc.close_stdin()?;
        }
        Ok(Response::new(pb::SendInputResponse {}))
    }

    async fn signal(
        &self,
        request: Request<pb::SignalRequest>,
    ) -> Result<Response<pb::SignalResponse>, Status> {
        let request = request.into_inner();
        check_signal(request.signal)?;
        self.procs.get(request.pid)?.signal_group(request.signal)?;
        Ok(Response::new(pb::SignalResponse {}))
    }

    async fn resize_pty(
        &self,
        request: Request<pb::ResizePtyRequest>,
    ) -> Result<Response<pb::ResizePtyResponse>, Status> {
        let request = request.into_inner();
        let proc = self.procs.get(request.pid)?;
        let size = request
            .size
            .ok_or_else(|| Status::invalid_argument("ResizePty needs a size (rows and cols)"))?;
        proc.resize(&size)?;
        Ok(Response::new(pb::ResizePtyResponse {}))
    }

    type ReadFileStream = ReceiverStream<Result<pb::ReadFileChunk, Status>>;

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let request = request.into_inner();
        let users = self.users.snapshot();
        let (tx, rx) = mpsc::channel(files::QUEUE);
        files::blocking(move || files::read_file(request, users, tx).map_err(Status::from)).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<pb::WriteFileChunk>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        use pb::write_file_chunk::Chunk;
        let link = request.extensions().get::<LinkInfo>().cloned();
        let mut chunks = request.into_inner();
        let header = match chunks.message().await? {
            Some(pb::WriteFileChunk {
                chunk: Some(Chunk::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first WriteFile message must be the header",
                ));
            }
        };
        if header.bulk_transfer != 0 {
            return self.write_file_bulk(header, link, chunks).await;
        }
        let (tx, rx) = mpsc::channel(files::QUEUE);
        // The writer is its own task: if this handler is dropped (the call
        // was cancelled), the channel closes without `Finish` and the
        // writer removes its temp file.
        let mut writer = tokio::spawn(files::write_file(header, self.users.snapshot(), rx));
        let mut received = 0u64;
        let outcome = loop {
            tokio::select! {
                result = &mut writer => break result,
                message = chunks.message() => match message {
                    Ok(Some(pb::WriteFileChunk { chunk: Some(Chunk::Data(data)) })) => {
                        received += data.len() as u64;
                        if tx.send(WriteMsg::Data(data)).await.is_err() {
                            // The writer failed; its error is the answer.
                            break (&mut writer).await;
                        }
                    }
                    Ok(Some(pb::WriteFileChunk { chunk: Some(Chunk::End(end)) })) => {
                        if end.total_bytes != received {
                            drop(tx);
                            let _ = writer.await;
                            return Err(Status::data_loss(format!(
                                "the upload ended after {received} bytes but the sender \
                                 sent {}; the file was not changed",
                                end.total_bytes
                            )));
                        }
                        let _ = tx.send(WriteMsg::Finish).await;
                        break (&mut writer).await;
                    }
                    Ok(Some(pb::WriteFileChunk { chunk: Some(Chunk::Header(_)) })) => {
                        drop(tx);
                        let _ = writer.await;
                        return Err(Status::invalid_argument(
                            "WriteFile got a second header; send one header, then data",
                        ));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // The stream ended without `end`: the sender gave up
                        // (or failed) midway. The writer discards its temp
                        // file and reports the cancellation.
                        drop(tx);
                        break (&mut writer).await;
                    }
                    Err(status) => {
                        drop(tx);
                        let _ = writer.await;
                        return Err(status);
                    }
                },
            }
        };
        let response = outcome
            .map_err(|e| Status::internal(format!("the file writer failed unexpectedly: {e}")))??;
        Ok(Response::new(response))
    }

    type ListDirStream = ReceiverStream<Result<pb::ListDirChunk, Status>>;

    async fn list_dir(
        &self,
        request: Request<pb::ListDirRequest>,
    ) -> Result<Response<Self::ListDirStream>, Status> {
        let request = request.into_inner();
        let users = self.users.snapshot();
        let (tx, rx) = mpsc::channel(files::QUEUE);
        files::blocking(move || files::list_dir(request, users, tx).map_err(Status::from)).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let path = request.into_inner().path;
        let users = self.users.snapshot();
        let stat =
            files::blocking(move || files::stat(&path, &users).map_err(Status::from)).await?;
        Ok(Response::new(pb::StatResponse { stat: Some(stat) }))
    }

    async fn make_dir(
        &self,
        request: Request<pb::MakeDirRequest>,
    ) -> Result<Response<pb::MakeDirResponse>, Status> {
        let request = request.into_inner();
        let users = self.users.snapshot();
        let stat = files::blocking(move || files::make_dir(&request, &users).map_err(Status::from))
            .await?;
        Ok(Response::new(pb::MakeDirResponse { stat: Some(stat) }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let request = request.into_inner();
        files::blocking(move || files::remove(&request).map_err(Status::from)).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn rename(
        &self,
        request: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::RenameResponse>, Status> {
        let request = request.into_inner();
        files::blocking(move || files::rename(&request).map_err(Status::from)).await?;
        Ok(Response::new(pb::RenameResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_signals() {
        assert!(check_signal(15).is_ok());
        assert!(check_signal(0).is_err());
        assert!(check_signal(65).is_err());
    }
}
