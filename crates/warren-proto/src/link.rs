//! The link: turns the raw channel into one HTTP/2-ready byte stream per
//! host connection, and measures the raw channel.
//!
//! Host side ([`HostLink::establish`]): connects, sends padding + Hello with
//! a fresh epoch and nonce, waits for the matching HelloAck (skipping
//! anything older), then pumps bytes between a [`tokio::io::DuplexStream`]
//! (handed to the gRPC client) and Data frames.
//!
//! Guest side ([`serve_guest_port`]): reads the port on a blocking thread
//! (the virtio-serial port returns EOF while no host is connected, which an
//! epoll loop would spin on), and on every new Hello hands a fresh duplex
//! stream to the gRPC server, dropping the previous one.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::frame::{self, Decoder, Frame, FrameKind, HEADER_LEN, Hello, MAX_PAYLOAD};

/// Version of the link layer (framing + handshake).
pub const LINK_VERSION: u32 = 1;
/// Buffer of the in-memory pipe between the gRPC stack and the link pumps.
const DUPLEX_BUFFER: usize = 1024 * 1024;
/// Frames queued for the writer before producers wait.
const WRITE_QUEUE_FRAMES: usize = 64;

/// Why a link could not be established or used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The transport failed.
    #[error("agent channel I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// No valid HelloAck arrived in time.
    #[error(
        "the guest agent did not answer the handshake within {0:?}; the guest may still be booting, or its agent failed (see the sandbox console log)"
    )]
    HandshakeTimeout(Duration),
    /// The transport closed during the handshake.
    #[error("the agent channel closed during the handshake (the VM may have exited)")]
    ClosedDuringHandshake,
    /// The link is gone (peer closed or the transport failed).
    #[error("the agent channel is closed")]
    Closed,
    /// A link-level request got no answer in time.
    #[error("the guest agent did not answer a link request within {0:?}")]
    Timeout(Duration),
    /// The guest speaks a link version this host does not.
    #[error("guest agent speaks link version {guest}, host speaks {host}; rebuild the guest image")]
    VersionMismatch {
        /// The guest's version.
        guest: u32,
        /// Ours.
        host: u32,
    },
}

/// Raw channel throughput, measured without HTTP/2 or protobuf on top.
#[derive(Debug, Clone, Copy)]
pub struct RawThroughput {
    /// Bytes moved.
    pub bytes: u64,
    /// Time it took.
    pub elapsed: Duration,
}

impl RawThroughput {
    /// MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Outgoing {
    kind: FrameKind,
    payload: Bytes,
}

#[derive(Default)]
struct BenchState {
    discard_bytes: AtomicU64,
    pull_done: Mutex<Option<oneshot::Sender<()>>>,
    pongs: Mutex<Vec<(Bytes, oneshot::Sender<()>)>>,
}

/// A host-side link to one guest agent, for one connection epoch.
///
/// Dropping it (or the stream it handed out being closed) ends the pumps.
pub struct HostLink {
    epoch: u32,
    stream: Option<DuplexStream>,
    out_tx: mpsc::Sender<Outgoing>,
    bench: Arc<BenchState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // The stream pump keeps running while the gRPC side holds its end;
        // only the pumps that would otherwise outlive everything are ended.
        if self.stream.is_some() {
            for task in &self.tasks {
                task.abort();
            }
        }
    }
}

impl HostLink {
    /// Performs the handshake over `io` and starts the pumps.
    ///
    /// `timeout` bounds the wait for the guest's HelloAck; while the guest
    /// boots the Hello simply waits in the channel, and is re-sent every
    /// two seconds in case an agent restart swallowed it.
    pub async fn establish<IO>(io: IO, timeout: Duration) -> Result<Self, LinkError>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(io);
        let epoch = loop {
            let e: u32 = rand::random();
            if e != 0 {
                break e;
            }
        };
        let hello = Hello {
            nonce: rand::random(),
            version: LINK_VERSION,
        };
        let mut hello_bytes = frame::resync_padding();
        hello_bytes.extend_from_slice(&frame::encode(FrameKind::Hello, epoch, &hello.encode()));

        let deadline = Instant::now() + timeout;
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        writer.write_all(&hello_bytes).await?;
        writer.flush().await?;
        let mut next_resend = Instant::now() + Duration::from_secs(2);
        'handshake: loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(LinkError::HandshakeTimeout(timeout));
            }
            let wake = deadline.min(next_resend);
            let n = match tokio::time::timeout(wake - now, reader.read(&mut buf)).await {
                Err(_) => {
                    if Instant::now() >= next_resend {
                        writer.write_all(&hello_bytes).await?;
                        writer.flush().await?;
                        next_resend = Instant::now() + Duration::from_secs(2);
                    }
                    continue;
                }
                Ok(result) => result?,
            };
            if n == 0 {
                return Err(LinkError::ClosedDuringHandshake);
            }
            decoder.push(&buf[..n]);
            while let Some(frame) = decoder.next_frame() {
                if frame.kind != FrameKind::HelloAck || frame.epoch != epoch {
                    continue;
                }
                let Some(ack) = Hello::decode(&frame.payload) else {
                    continue;
                };
                if ack.nonce != hello.nonce {
                    continue;
                }
                if ack.version != LINK_VERSION {
                    return Err(LinkError::VersionMismatch {
                        guest: ack.version,
                        host: LINK_VERSION,
                    });
                }
                break 'handshake;
            }
        }

        let (grpc_end, link_end) = tokio::io::duplex(DUPLEX_BUFFER);
        let (mut from_grpc, mut to_grpc) = tokio::io::split(link_end);
        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE_FRAMES);
        let bench = Arc::new(BenchState::default());
        // Set when the gRPC side closed its end: every pump then stops and
        // the transport is closed, so the VMM accepts the next connection.
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);

        // Writer: the only task that writes to the transport.
        let mut writer_closed = closed_rx.clone();
        let writer_task = tokio::spawn(async move {
            loop {
                let out = tokio::select! {
                    out = out_rx.recv() => match out { Some(out) => out, None => break },
                    _ = writer_closed.wait_for(|closed| *closed) => break,
                };
                let header = frame::encode_header(out.kind, epoch, out.payload.len());
                if writer.write_all(&header).await.is_err()
                    || writer.write_all(&out.payload).await.is_err()
                {
                    break;
                }
                if out_rx.is_empty() && writer.flush().await.is_err() {
                    break;
                }
            }
            // Dropping the write half (with the read half) closes the
            // transport; no explicit shutdown, so a transport shared with a
            // later connection (as in tests) stays usable.
        });

        // gRPC → transport.
        let data_tx = out_tx.clone();
        let outbound_task = tokio::spawn(async move {
            let mut chunk = vec![0u8; MAX_PAYLOAD];
            loop {
                match from_grpc.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let out = Outgoing {
                            kind: FrameKind::Data,
                            payload: Bytes::copy_from_slice(&chunk[..n]),
                        };
                        if data_tx.send(out).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = closed_tx.send(true);
        });

        // Transport → gRPC, plus link-level control frames.
        let bench_in = bench.clone();
        let pong_tx = out_tx.clone();
        let mut inbound_closed = closed_rx;
        let inbound_task = tokio::spawn(async move {
            // Frames that were already decoded with the ack stay valid.
            let mut pending: Vec<Frame> = std::iter::from_fn(|| decoder.next_frame()).collect();
            loop {
                for frame in pending.drain(..) {
                    if frame.epoch != epoch {
                        continue;
                    }
                    match frame.kind {
                        FrameKind::Data => {
                            if to_grpc.write_all(&frame.payload).await.is_err() {
                                return;
                            }
                        }
                        FrameKind::Discard => {
                            bench_in
                                .discard_bytes
                                .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                        }
                        FrameKind::BenchPullDone => {
                            if let Some(done) = bench_in.pull_done.lock().await.take() {
                                let _ = done.send(());
                            }
                        }
                        FrameKind::Pong => {
                            let mut pongs = bench_in.pongs.lock().await;
                            if let Some(i) = pongs.iter().position(|(t, _)| *t == frame.payload) {
                                let (_, done) = pongs.swap_remove(i);
                                let _ = done.send(());
                            }
                        }
                        FrameKind::Ping => {
                            let _ = pong_tx
                                .send(Outgoing {
                                    kind: FrameKind::Pong,
                                    payload: frame.payload,
                                })
                                .await;
                        }
                        FrameKind::Hello | FrameKind::HelloAck | FrameKind::BenchPull => {}
                    }
                }
                let read = tokio::select! {
                    read = reader.read(&mut buf) => read,
                    _ = inbound_closed.wait_for(|closed| *closed) => return,
                };
                match read {
                    Ok(0) | Err(_) => {
                        let _ = to_grpc.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        decoder.push(&buf[..n]);
                        pending.extend(std::iter::from_fn(|| decoder.next_frame()));
                    }
                }
            }
        });

        Ok(Self {
            epoch,
            stream: Some(grpc_end),
            out_tx,
            bench,
            tasks: vec![writer_task, outbound_task, inbound_task],
        })
    }

    /// The connection epoch of this link.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Takes the byte stream for the gRPC client. Once taken, the pumps live
    /// as long as that stream is open.
    pub fn take_stream(&mut self) -> Option<DuplexStream> {
        self.stream.take()
    }

    /// Round trip of a link-level ping (no HTTP/2 involved).
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, LinkError> {
        let token = Bytes::copy_from_slice(&rand::random::<[u8; 8]>());
        let (tx, rx) = oneshot::channel();
        self.bench.pongs.lock().await.push((token.clone(), tx));
        let start = Instant::now();
        self.send(FrameKind::Ping, token).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    /// Measures guest → host raw throughput by asking the guest for
    /// `bytes` of Discard frames.
    pub async fn bench_pull(
        &self,
        bytes: u64,
        timeout: Duration,
    ) -> Result<RawThroughput, LinkError> {
        let (tx, rx) = oneshot::channel();
        *self.bench.pull_done.lock().await = Some(tx);
        let before = self.bench.discard_bytes.load(Ordering::Relaxed);
        let start = Instant::now();
        self.send(
            FrameKind::BenchPull,
            Bytes::copy_from_slice(&bytes.to_le_bytes()),
        )
        .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(LinkError::Closed),
            Err(_) => return Err(LinkError::Timeout(timeout)),
        }
        let moved = self.bench.discard_bytes.load(Ordering::Relaxed) - before;
        Ok(RawThroughput {
            bytes: moved,
            elapsed: start.elapsed(),
        })
    }

    /// Measures host → guest raw throughput: sends `bytes` of Discard frames
    /// followed by a Ping, and times until the Pong (the guest answers in
    /// order, so the Pong means every byte was read).
    pub async fn bench_push(
        &self,
        bytes: u64,
        timeout: Duration,
    ) -> Result<RawThroughput, LinkError> {
        let token = Bytes::copy_from_slice(&rand::random::<[u8; 8]>());
        let (tx, rx) = oneshot::channel();
        self.bench.pongs.lock().await.push((token.clone(), tx));
        let chunk = Bytes::from(vec![0u8; MAX_PAYLOAD]);
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(MAX_PAYLOAD as u64) as usize;
            self.send(FrameKind::Discard, chunk.slice(..n)).await?;
            left -= n as u64;
        }
        self.send(FrameKind::Ping, token).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(RawThroughput {
                bytes,
                elapsed: start.elapsed(),
            }),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    async fn send(&self, kind: FrameKind, payload: Bytes) -> Result<(), LinkError> {
        self.out_tx
            .send(Outgoing { kind, payload })
            .await
            .map_err(|_| LinkError::Closed)
    }
}

/// Guest-side link statistics, for diagnostics.
#[derive(Debug, Default)]
pub struct GuestLinkStats {
    /// Connection epochs accepted so far.
    pub sessions: AtomicU64,
    /// Current epoch (0 before the first Hello).
    pub epoch: AtomicU32,
}

/// Serves the guest end of the channel forever.
///
/// `port` is the opened channel (the virtio-serial port device, or a socket
/// in tests); `open_writer` must return an independent writable handle to
/// the same channel. Every new host connection produces a fresh
/// [`DuplexStream`] on `incoming`; the previous one is closed, which makes
/// the gRPC server end that connection and cancel its foreground work.
///
/// Must be called from inside a tokio runtime; it spawns two OS threads and
/// returns at once.
pub fn serve_guest_port<R, W>(
    port: R,
    writer: W,
    incoming: mpsc::Sender<DuplexStream>,
) -> Arc<GuestLinkStats>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    serve_guest(port, writer, incoming, EndOfInput::HostMayReconnect)
}

/// Like [`serve_guest_port`], for a transport where end of input is final
/// (an accepted unix or vsock connection): at EOF or a read error the
/// reader thread ends and the connection's session with it.
pub fn serve_guest_stream<R, W>(
    stream: R,
    writer: W,
    incoming: mpsc::Sender<DuplexStream>,
) -> Arc<GuestLinkStats>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    serve_guest(stream, writer, incoming, EndOfInput::Final)
}

/// What EOF on the guest's transport means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndOfInput {
    /// No host is connected right now; one may come (virtio-serial).
    HostMayReconnect,
    /// The connection is over.
    Final,
}

fn serve_guest<R, W>(
    mut port: R,
    mut writer: W,
    incoming: mpsc::Sender<DuplexStream>,
    end_of_input: EndOfInput,
) -> Arc<GuestLinkStats>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let stats = Arc::new(GuestLinkStats::default());
    let current_epoch = Arc::new(AtomicU32::new(0));
    let (out_tx, mut out_rx) = mpsc::channel::<(u32, Outgoing)>(WRITE_QUEUE_FRAMES);
    let runtime = tokio::runtime::Handle::current();

    // Writer thread: frames of past epochs are dropped here, so a slow
    // producer of an old connection can never leak bytes into a new one.
    let writer_epoch = current_epoch.clone();
    std::thread::Builder::new()
        .name("link-writer".into())
        .spawn(move || {
            let mut header_and_payload = Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD);
            while let Some((epoch, out)) = out_rx.blocking_recv() {
                if epoch != writer_epoch.load(Ordering::Acquire) {
                    continue;
                }
                header_and_payload.clear();
                if out.kind == FrameKind::HelloAck {
                    // Flush out whatever half frame an earlier connection
                    // left in the host's decoder.
                    header_and_payload.extend_from_slice(&frame::resync_padding());
                }
                header_and_payload.extend_from_slice(&frame::encode_header(
                    out.kind,
                    epoch,
                    out.payload.len(),
                ));
                header_and_payload.extend_from_slice(&out.payload);
                if let Err(error) = writer.write_all(&header_and_payload) {
                    tracing::debug!(%error, "agent channel write failed; frame dropped");
                    continue;
                }
                let _ = writer.flush();
            }
        })
        .expect("spawn link writer thread");

    // Reader thread.
    let reader_stats = stats.clone();
    std::thread::Builder::new()
        .name("link-reader".into())
        .spawn(move || {
            let mut decoder = Decoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            // Sink of the current epoch's Data frames into its duplex.
            let mut to_server: Option<mpsc::Sender<Bytes>> = None;
            let mut epoch = 0u32;
            loop {
                let n = match port.read(&mut buf) {
                    Ok(0) if end_of_input == EndOfInput::Final => return,
                    Ok(0) => {
                        // No host connected: virtio-serial reports EOF until
                        // one connects. Nothing half-read can be trusted.
                        decoder.reset();
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Ok(n) => n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        tracing::debug!(%error, "agent channel read failed");
                        if end_of_input == EndOfInput::Final {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                decoder.push(&buf[..n]);
                while let Some(frame) = decoder.next_frame() {
                    match frame.kind {
                        FrameKind::Hello => {
                            let Some(hello) = Hello::decode(&frame.payload) else {
                                continue;
                            };
                            if frame.epoch == 0 {
                                continue;
                            }
                            if frame.epoch != epoch {
                                epoch = frame.epoch;
                                current_epoch.store(epoch, Ordering::Release);
                                reader_stats.epoch.store(epoch, Ordering::Relaxed);
                                reader_stats.sessions.fetch_add(1, Ordering::Relaxed);
                                // Dropping the old sender closes the old
                                // connection's input.
                                to_server = Some(start_session(
                                    &runtime,
                                    epoch,
                                    out_tx.clone(),
                                    incoming.clone(),
                                ));
                            }
                            let ack = Hello {
                                nonce: hello.nonce,
                                version: LINK_VERSION,
                            };
                            let out = Outgoing {
                                kind: FrameKind::HelloAck,
                                payload: Bytes::copy_from_slice(&ack.encode()),
                            };
                            let _ = out_tx.blocking_send((epoch, out));
                        }
                        _ if frame.epoch != epoch || epoch == 0 => {}
                        FrameKind::Data => {
                            if let Some(sink) = &to_server
                                && sink.blocking_send(frame.payload).is_err()
                            {
                                to_server = None;
                            }
                        }
                        FrameKind::Ping => {
                            let out = Outgoing {
                                kind: FrameKind::Pong,
                                payload: frame.payload,
                            };
                            let _ = out_tx.blocking_send((epoch, out));
                        }
                        FrameKind::BenchPull => {
                            let Ok(raw) = <[u8; 8]>::try_from(frame.payload.as_ref()) else {
                                continue;
                            };
                            let mut left = u64::from_le_bytes(raw).min(64 << 30);
                            let chunk = Bytes::from(vec![0u8; MAX_PAYLOAD]);
                            let tx = out_tx.clone();
                            let pull_epoch = epoch;
                            std::thread::spawn(move || {
                                while left > 0 {
                                    let n = left.min(MAX_PAYLOAD as u64) as usize;
                                    let out = Outgoing {
                                        kind: FrameKind::Discard,
                                        payload: chunk.slice(..n),
                                    };
                                    if tx.blocking_send((pull_epoch, out)).is_err() {
                                        return;
                                    }
                                    left -= n as u64;
                                }
                                let done = Outgoing {
                                    kind: FrameKind::BenchPullDone,
                                    payload: Bytes::new(),
                                };
                                let _ = tx.blocking_send((pull_epoch, done));
                            });
                        }
                        FrameKind::Discard
                        | FrameKind::HelloAck
                        | FrameKind::BenchPullDone
                        | FrameKind::Pong => {}
                    }
                }
            }
        })
        .expect("spawn link reader thread");
    stats
}

/// Creates the duplex for a new epoch, hands one end to the server, and
/// spawns the pumps for the other. Returns the sink for inbound Data.
fn start_session(
    runtime: &tokio::runtime::Handle,
    epoch: u32,
    out_tx: mpsc::Sender<(u32, Outgoing)>,
    incoming: mpsc::Sender<DuplexStream>,
) -> mpsc::Sender<Bytes> {
    let (server_end, link_end) = tokio::io::duplex(DUPLEX_BUFFER);
    let (mut from_server, mut to_server) = tokio::io::split(link_end);
    let (data_tx, mut data_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_FRAMES);
    runtime.spawn(async move {
        while let Some(bytes) = data_rx.recv().await {
            if to_server.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    });
    runtime.spawn(async move {
        let mut chunk = vec![0u8; MAX_PAYLOAD];
        loop {
            match from_server.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let out = Outgoing {
                        kind: FrameKind::Data,
                        payload: Bytes::copy_from_slice(&chunk[..n]),
                    };
                    if out_tx.send((epoch, out)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let _ = incoming.try_send(server_end);
    data_tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream as StdUnixStream;

    /// A guest served over one end of a socketpair; returns the host end
    /// and the stream of server-side connections.
    fn guest_pair() -> (tokio::net::UnixStream, mpsc::Receiver<DuplexStream>) {
        let (host, guest) = StdUnixStream::pair().unwrap();
        let guest_writer = guest.try_clone().unwrap();
        let (tx, rx) = mpsc::channel(4);
        serve_guest_port(guest, guest_writer, tx);
        host.set_nonblocking(true).unwrap();
        (tokio::net::UnixStream::from_std(host).unwrap(), rx)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_after_the_handshake() {
        let (host, mut incoming) = guest_pair();
        let mut link = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        let mut host_stream = link.take_stream().unwrap();
        let mut guest_stream = incoming.recv().await.unwrap();
        host_stream.write_all(b"ping from host").await.unwrap();
        let mut buf = [0u8; 14];
        guest_stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping from host");
        guest_stream.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        host_stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(link.ping(Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn a_second_connection_replaces_the_first_despite_stale_bytes() {
        let (host_raw, guest_raw) = StdUnixStream::pair().unwrap();
        let guest_writer = guest_raw.try_clone().unwrap();
        let (tx, mut incoming) = mpsc::channel(4);
        serve_guest_port(guest_raw, guest_writer, tx);
        // Keep a duplicate of the host end to play the "next" connection on
        // the same byte stream, like QEMU's chardev does.
        let second = host_raw.try_clone().unwrap();
        host_raw.set_nonblocking(true).unwrap();
        let host = tokio::net::UnixStream::from_std(host_raw).unwrap();
        let mut first = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        let mut first_stream = first.take_stream().unwrap();
        let mut first_guest = incoming.recv().await.unwrap();
        // Leave a half frame behind, as a host killed mid-write would.
        let half = frame::encode(FrameKind::Data, first.epoch(), &[7u8; 5000]);
        let mut raw = second.try_clone().unwrap();
        raw.write_all(&half[..1000]).unwrap();
        drop(first_stream.shutdown().await);
        drop(first);

        second.set_nonblocking(true).unwrap();
        let host2 = tokio::net::UnixStream::from_std(second).unwrap();
        let mut link2 = HostLink::establish(host2, Duration::from_secs(5))
            .await
            .unwrap();
        let mut stream2 = link2.take_stream().unwrap();
        let mut guest2 = incoming.recv().await.unwrap();
        stream2.write_all(b"fresh").await.unwrap();
        let mut buf = [0u8; 5];
        guest2.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"fresh");
        // The first server connection was ended.
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), first_guest.read_to_end(&mut rest)).await;
        guest2.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        stream2.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }

    #[tokio::test]
    async fn raw_benchmarks_move_the_requested_bytes() {
        let (host, _incoming) = guest_pair();
        let link = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        let pull = link
            .bench_pull(4 << 20, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(pull.bytes, 4 << 20);
        let push = link
            .bench_push(4 << 20, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(push.bytes, 4 << 20);
    }

    #[tokio::test]
    async fn handshake_times_out_when_nobody_answers() {
        let (host, _guest) = tokio::net::UnixStream::pair().unwrap();
        let err = HostLink::establish(host, Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, LinkError::HandshakeTimeout(_)), "{err}");
    }
}
