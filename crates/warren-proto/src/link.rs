//! The link: turns the raw channel into one HTTP/2-ready byte stream per
//! host connection, and measures the raw channel.
//!
//! Host side ([`HostLink::establish`]): connects, sends padding + Hello with
//! a fresh epoch and nonce, waits for the matching HelloAck (skipping
//! anything older), then exposes the connection as a [`LinkStream`] for the
//! gRPC client.
//!
//! Guest side ([`serve_guest_port`], [`serve_guest_stream`]): reads the
//! channel on a blocking thread (the virtio-serial port returns EOF while
//! no host is connected, which an epoll loop would spin on), and on every
//! new Hello hands a fresh [`LinkStream`] to the gRPC server, ending the
//! previous one.
//!
//! [`LinkStream`] turns writes straight into frames and reads straight out
//! of received payloads: no intermediate pipe, because under software
//! emulation every copy of bulk data costs guest CPU that file transfers
//! need.

use std::io::Write;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
#[cfg(any(test, feature = "bench"))]
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use crate::bulk::{BulkCredits, BulkPort, BulkSender};
use crate::frame::{self, Decoder, Frame, FrameKind, HEADER_LEN, Hello};

/// Version of the link layer (framing + handshake).
/// Version 2 added [`FrameKind::SetClock`]; version 3 bulk uploads
/// ([`crate::bulk`]).
pub const LINK_VERSION: u32 = 3;
/// First guest link version that takes bulk uploads.
pub const BULK_LINK_VERSION: u32 = 3;
/// Oldest guest link version this host still talks to (paused sandboxes and
/// templates keep the agent they were made with).
pub const OLDEST_GUEST_LINK_VERSION: u32 = 1;
/// What the guest does with a clock the host sends: nanoseconds since 1970.
pub type SetClockHook = fn(i64);
/// Payload of the frames we send: header plus payload fill exactly 32 KiB,
/// the most a single write to a virtio-serial port takes, so every frame
/// is one write and one virtqueue buffer.
pub const SEND_PAYLOAD: usize = 32 * 1024 - HEADER_LEN;
/// Frames queued towards the transport before writers wait.
const WRITE_QUEUE_FRAMES: usize = 128;
/// Received payloads queued towards the reader before the transport waits.
const READ_QUEUE_FRAMES: usize = 512;

/// Why a link could not be established or used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The transport failed.
    #[error("agent channel I/O failed")]
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

impl LinkError {
    /// The link error in `error`'s chain of sources, if there is one.
    ///
    /// Callers that dial through a transport (tonic's connector) get the
    /// link error back wrapped in `std::io::Error::other` and the
    /// transport's own errors; this finds it there (an `io::Error`'s
    /// `source()` skips the error it wraps, so walking `source()` alone
    /// would not), so they can tell a handshake timeout from other failures
    /// by its variant instead of by its text.
    pub fn find_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a LinkError> {
        let mut next = Some(error);
        while let Some(current) = next {
            if let Some(link) = current.downcast_ref::<LinkError>() {
                return Some(link);
            }
            next = match current
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
                None => current.source(),
            };
        }
        None
    }
}

/// Raw channel throughput, measured without HTTP/2 or protobuf on top
/// (benchmarks only: the `bench` feature).
#[cfg(any(test, feature = "bench"))]
#[derive(Debug, Clone, Copy)]
pub struct RawThroughput {
    /// Bytes moved.
    pub bytes: u64,
    /// Time it took.
    pub elapsed: Duration,
}

#[cfg(any(test, feature = "bench"))]
impl RawThroughput {
    /// MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A whole encoded frame (header + payload) ready for one write.
type WireFrame = Bytes;

/// Encodes one frame into a single buffer.
pub(crate) fn wire(kind: FrameKind, epoch: u32, payload: &[u8]) -> WireFrame {
    Bytes::from(frame::encode(kind, epoch, payload))
}

/// One connection's byte stream over the link, for an HTTP/2 endpoint.
///
/// Reads yield the payloads of the connection's Data frames in order;
/// writes become Data frames (one per write, at most [`SEND_PAYLOAD`]
/// bytes). Dropping it ends the connection on this side.
pub struct LinkStream {
    epoch: u32,
    inbound: mpsc::Receiver<Bytes>,
    current: Bytes,
    outbound: PollSender<Outgoing>,
    /// Guest side: the link's bulk transfers.
    bulk: Option<BulkPort>,
}

/// What a gRPC server learns about the connection a call came over
/// (`request.extensions().get::<LinkInfo>()`).
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// The connection's epoch.
    pub epoch: u32,
    /// Where the connection's bulk uploads arrive (guest side).
    pub bulk: Option<BulkPort>,
}

impl std::fmt::Debug for LinkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkStream")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl LinkStream {
    /// The connection epoch this stream belongs to.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

/// Lets a tonic server accept link streams as connections.
impl tonic::transport::server::Connected for LinkStream {
    type ConnectInfo = LinkInfo;

    /// The connection's epoch and bulk port.
    fn connect_info(&self) -> Self::ConnectInfo {
        LinkInfo {
            epoch: self.epoch,
            bulk: self.bulk.clone(),
        }
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match ready!(self.inbound.poll_recv(cx)) {
                Some(payload) => self.current = payload,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl LinkStream {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if ready!(self.outbound.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = total.min(SEND_PAYLOAD);
        let mut frame = Vec::with_capacity(HEADER_LEN + n);
        frame.extend_from_slice(&frame::encode_header(FrameKind::Data, self.epoch, n));
        let mut left = n;
        for slice in bufs {
            if left == 0 {
                break;
            }
            let take = slice.len().min(left);
            frame.extend_from_slice(&slice[..take]);
            left -= take;
        }
        let out = Outgoing {
            epoch: self.epoch,
            frame: Bytes::from(frame),
            pad: false,
        };
        match self.outbound.send_item(out) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_send(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.outbound.close();
        Poll::Ready(Ok(()))
    }
}

/// What the benchmark probes (`bench_pull`, `bench_push`, `ping`) wait
/// for; compiled only for them (the `bench` feature), so the product's
/// reader pump ignores Discard, BenchPullDone and Pong frames.
#[cfg(any(test, feature = "bench"))]
#[derive(Default)]
struct BenchState {
    discard_bytes: AtomicU64,
    pull_done: Mutex<Option<oneshot::Sender<()>>>,
    pongs: Mutex<Vec<(Bytes, oneshot::Sender<()>)>>,
}

/// A host-side link to one guest agent, for one connection epoch.
///
/// The pumps live while either this handle or the [`LinkStream`] it handed
/// out is alive; once both are gone the transport is closed, so the VMM
/// accepts the next connection.
pub struct HostLink {
    epoch: u32,
    guest_version: u32,
    stream: Option<LinkStream>,
    out_tx: mpsc::Sender<Outgoing>,
    #[cfg(any(test, feature = "bench"))]
    bench: Arc<BenchState>,
    bulk: Arc<BulkCredits>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // If the stream was never taken nobody else needs the pumps.
        if self.stream.is_some() {
            for task in &self.tasks {
                task.abort();
            }
        }
    }
}

impl HostLink {
    /// Whether the guest set its clock from the SetClock frame sent with
    /// the handshake (link version 2 and later); older guests need the
    /// SetClock call.
    pub fn clock_set_by_link(&self) -> bool {
        self.guest_version >= 2
    }

    /// Starts a bulk upload ([`crate::bulk`]) with a fresh transfer id, or
    /// `None` if the guest is older than bulk uploads (then the bytes go
    /// through the call itself).
    pub fn open_bulk(&self) -> Option<Result<BulkSender, LinkError>> {
        if self.guest_version < BULK_LINK_VERSION {
            return None;
        }
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Some(self.bulk.open(id, self.epoch, self.out_tx.clone()))
    }

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
        // The clock rides behind the Hello, read at each (re)send.
        let hello_bytes = || {
            let mut bytes = frame::resync_padding();
            bytes.extend_from_slice(&frame::encode(FrameKind::Hello, epoch, &hello.encode()));
            bytes.extend_from_slice(&frame::encode(
                FrameKind::SetClock,
                epoch,
                &crate::unix_time_ns().to_le_bytes(),
            ));
            bytes
        };

        let deadline = Instant::now() + timeout;
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        writer.write_all(&hello_bytes()).await?;
        writer.flush().await?;
        let mut next_resend = Instant::now() + Duration::from_secs(2);
        let guest_version = 'handshake: loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(LinkError::HandshakeTimeout(timeout));
            }
            let wake = deadline.min(next_resend);
            let n = match tokio::time::timeout(wake - now, reader.read(&mut buf)).await {
                Err(_) => {
                    if Instant::now() >= next_resend {
                        writer.write_all(&hello_bytes()).await?;
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
                if !(OLDEST_GUEST_LINK_VERSION..=LINK_VERSION).contains(&ack.version) {
                    return Err(LinkError::VersionMismatch {
                        guest: ack.version,
                        host: LINK_VERSION,
                    });
                }
                break 'handshake ack.version;
            }
        };

        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE_FRAMES);
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(READ_QUEUE_FRAMES);
        #[cfg(any(test, feature = "bench"))]
        let bench = Arc::new(BenchState::default());
        let bulk = Arc::new(BulkCredits::default());
        // Set when the inbound side ends (transport closed, or the stream's
        // reader gone): the writer then stops too, closing the transport so
        // the VMM accepts the next connection.
        let (closed_tx, mut closed_rx) = tokio::sync::watch::channel(false);

        // Writer: the only task that writes to the transport.
        let writer_task = tokio::spawn(async move {
            loop {
                let out = tokio::select! {
                    out = out_rx.recv() => match out {
                        Some(out) => out,
                        None => break,
                    },
                    _ = closed_rx.wait_for(|closed| *closed) => break,
                };
                if writer.write_all(&out.frame).await.is_err() {
                    break;
                }
                if out_rx.is_empty() && writer.flush().await.is_err() {
                    break;
                }
            }
        });

        // Transport → stream, plus link-level control frames. Ends at EOF,
        // or when the stream's reader is gone (in_tx closed).
        #[cfg(any(test, feature = "bench"))]
        let bench_in = bench.clone();
        let bulk_in = bulk.clone();
        let control_tx = out_tx.clone();
        let inbound_task = tokio::spawn(async move {
            let _closed = CloseOnDrop(closed_tx);
            let _bulk_closed = CloseBulkOnDrop(bulk_in.clone());
            let mut pending: Vec<Frame> = std::iter::from_fn(|| decoder.next_frame()).collect();
            loop {
                for frame in pending.drain(..) {
                    if frame.epoch != epoch {
                        continue;
                    }
                    match frame.kind {
                        FrameKind::Data => {
                            if in_tx.send(frame.payload).await.is_err() {
                                return;
                            }
                        }
                        #[cfg(any(test, feature = "bench"))]
                        FrameKind::Discard => {
                            bench_in
                                .discard_bytes
                                .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                        }
                        #[cfg(any(test, feature = "bench"))]
                        FrameKind::BenchPullDone => {
                            if let Some(done) = bench_in.pull_done.lock().await.take() {
                                let _ = done.send(());
                            }
                        }
                        #[cfg(any(test, feature = "bench"))]
                        FrameKind::Pong => {
                            let mut pongs = bench_in.pongs.lock().await;
                            if let Some(i) = pongs.iter().position(|(t, _)| *t == frame.payload) {
                                let (_, done) = pongs.swap_remove(i);
                                let _ = done.send(());
                            }
                        }
                        FrameKind::Ping => {
                            let _ = control_tx
                                .send(Outgoing::frame(
                                    epoch,
                                    wire(FrameKind::Pong, epoch, &frame.payload),
                                ))
                                .await;
                        }
                        FrameKind::BulkAck => bulk_in.acknowledge(&frame.payload),
                        #[cfg(not(any(test, feature = "bench")))]
                        FrameKind::Discard | FrameKind::BenchPullDone | FrameKind::Pong => {}
                        FrameKind::Hello
                        | FrameKind::HelloAck
                        | FrameKind::BenchPull
                        | FrameKind::SetClock
                        | FrameKind::BulkData => {}
                    }
                }
                let read = tokio::select! {
                    read = reader.read(&mut buf) => read,
                    _ = in_tx.closed() => return,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        decoder.push(&buf[..n]);
                        pending.extend(std::iter::from_fn(|| decoder.next_frame()));
                    }
                }
            }
        });

        let stream = LinkStream {
            epoch,
            inbound: in_rx,
            current: Bytes::new(),
            outbound: PollSender::new(out_tx.clone()),
            bulk: None,
        };
        Ok(Self {
            guest_version,
            epoch,
            stream: Some(stream),
            out_tx,
            #[cfg(any(test, feature = "bench"))]
            bench,
            bulk,
            tasks: vec![writer_task, inbound_task],
        })
    }

    /// The connection epoch of this link.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Takes the byte stream for the gRPC client (once).
    pub fn take_stream(&mut self) -> Option<LinkStream> {
        self.stream.take()
    }

    /// Round trip of a link-level ping (no HTTP/2 involved; benchmarks
    /// only: the `bench` feature).
    #[cfg(any(test, feature = "bench"))]
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, LinkError> {
        let token = Bytes::copy_from_slice(&rand::random::<[u8; 8]>());
        let (tx, rx) = oneshot::channel();
        self.bench.pongs.lock().await.push((token.clone(), tx));
        let start = Instant::now();
        self.send(wire(FrameKind::Ping, self.epoch, &token)).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    /// Measures guest → host raw throughput by asking the guest for
    /// `bytes` of Discard frames (the `bench` feature).
    #[cfg(any(test, feature = "bench"))]
    pub async fn bench_pull(
        &self,
        bytes: u64,
        timeout: Duration,
    ) -> Result<RawThroughput, LinkError> {
        let (tx, rx) = oneshot::channel();
        *self.bench.pull_done.lock().await = Some(tx);
        let before = self.bench.discard_bytes.load(Ordering::Relaxed);
        let start = Instant::now();
        self.send(wire(FrameKind::BenchPull, self.epoch, &bytes.to_le_bytes()))
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
    /// order, so the Pong means every byte was read; the `bench` feature).
    #[cfg(any(test, feature = "bench"))]
    pub async fn bench_push(
        &self,
        bytes: u64,
        timeout: Duration,
    ) -> Result<RawThroughput, LinkError> {
        let token = Bytes::copy_from_slice(&rand::random::<[u8; 8]>());
        let (tx, rx) = oneshot::channel();
        self.bench.pongs.lock().await.push((token.clone(), tx));
        let full = wire(FrameKind::Discard, self.epoch, &vec![0u8; SEND_PAYLOAD]);
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(SEND_PAYLOAD as u64) as usize;
            let frame = if n == SEND_PAYLOAD {
                full.clone()
            } else {
                wire(FrameKind::Discard, self.epoch, &vec![0u8; n])
            };
            self.send(frame).await?;
            left -= n as u64;
        }
        self.send(wire(FrameKind::Ping, self.epoch, &token)).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(RawThroughput {
                bytes,
                elapsed: start.elapsed(),
            }),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    #[cfg(any(test, feature = "bench"))]
    async fn send(&self, frame: WireFrame) -> Result<(), LinkError> {
        self.out_tx
            .send(Outgoing::frame(self.epoch, frame))
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

/// Serves the guest end of the virtio-serial port forever.
///
/// `port` is the opened channel; `writer` an independent writable handle to
/// it (a `try_clone`). Every new host connection produces a fresh
/// [`LinkStream`] on `incoming`; the previous one ends, which makes the gRPC
/// server end that connection and cancel its foreground work.
///
/// Spawns two OS threads and returns at once.
pub fn serve_guest_port<R, W>(
    port: R,
    writer: W,
    incoming: mpsc::Sender<LinkStream>,
    set_clock: Option<SetClockHook>,
) -> Arc<GuestLinkStats>
where
    R: AsFd + Send + 'static,
    W: Write + Send + 'static,
{
    serve_guest(
        port,
        writer,
        incoming,
        EndOfInput::HostMayReconnect,
        set_clock,
    )
}

/// Like [`serve_guest_port`], for a transport where end of input is final
/// (an accepted unix or vsock connection): at EOF or a read error the
/// reader thread ends and the connection's session with it.
pub fn serve_guest_stream<R, W>(
    stream: R,
    writer: W,
    incoming: mpsc::Sender<LinkStream>,
    set_clock: Option<SetClockHook>,
) -> Arc<GuestLinkStats>
where
    R: AsFd + Send + 'static,
    W: Write + Send + 'static,
{
    serve_guest(stream, writer, incoming, EndOfInput::Final, set_clock)
}

/// What EOF on the guest's transport means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndOfInput {
    /// No host is connected right now; one may come (virtio-serial).
    HostMayReconnect,
    /// The connection is over.
    Final,
}

/// A frame for a writer, tagged with its epoch so the guest drops frames of
/// an ended connection instead of leaking them into the next one.
pub(crate) struct Outgoing {
    epoch: u32,
    frame: WireFrame,
    /// Write resync padding first (before a HelloAck).
    pad: bool,
}

impl Outgoing {
    pub(crate) fn frame(epoch: u32, frame: WireFrame) -> Self {
        Self {
            epoch,
            frame,
            pad: false,
        }
    }
}

/// Signals "closed" when dropped, however the owning task ends.
struct CloseOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Fails every waiting bulk sender when the inbound side ends.
struct CloseBulkOnDrop(Arc<BulkCredits>);

impl Drop for CloseBulkOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn serve_guest<R, W>(
    port: R,
    mut writer: W,
    incoming: mpsc::Sender<LinkStream>,
    end_of_input: EndOfInput,
    set_clock: Option<SetClockHook>,
) -> Arc<GuestLinkStats>
where
    R: AsFd + Send + 'static,
    W: Write + Send + 'static,
{
    let stats = Arc::new(GuestLinkStats::default());
    let current_epoch = Arc::new(AtomicU32::new(0));
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(WRITE_QUEUE_FRAMES);
    let writer_epoch = current_epoch.clone();
    std::thread::Builder::new()
        .name("link-writer".into())
        .spawn(move || {
            let padding = frame::resync_padding();
            while let Some(out) = out_rx.blocking_recv() {
                if out.epoch != writer_epoch.load(Ordering::Acquire) {
                    continue;
                }
                if out.pad {
                    // Flush out whatever half frame an earlier connection
                    // left in the host's decoder.
                    let _ = writer.write_all(&padding);
                }
                if let Err(error) = writer.write_all(&out.frame) {
                    tracing::debug!(%error, "agent channel write failed; frame dropped");
                    continue;
                }
                let _ = writer.flush();
            }
        })
        .expect("spawn link writer thread");

    let reader_stats = stats.clone();
    let bulk = BulkPort::new(out_tx.clone());
    std::thread::Builder::new()
        .name("link-reader".into())
        .spawn(move || {
            let mut decoder = Decoder::new();
            // Sink of the current epoch's Data frames into its stream.
            let mut to_stream: Option<mpsc::Sender<Bytes>> = None;
            let mut epoch = 0u32;
            let send = |out: Outgoing| {
                let _ = out_tx.blocking_send(out);
            };
            loop {
                match decoder.read_from(port.as_fd()) {
                    Ok(0) if end_of_input == EndOfInput::Final => return,
                    Ok(0) => {
                        // No host connected: virtio-serial reports EOF until
                        // one connects. Nothing half-read can be trusted.
                        decoder.reset();
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        tracing::debug!(%error, "agent channel read failed");
                        if end_of_input == EndOfInput::Final {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
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
                                // Replacing the sender ends the old stream's
                                // input.
                                to_stream = Some(start_session(
                                    epoch,
                                    out_tx.clone(),
                                    bulk.clone(),
                                    &incoming,
                                ));
                            }
                            let ack = Hello {
                                nonce: hello.nonce,
                                version: LINK_VERSION,
                            };
                            send(Outgoing {
                                epoch,
                                frame: wire(FrameKind::HelloAck, epoch, &ack.encode()),
                                pad: true,
                            });
                        }
                        _ if frame.epoch != epoch || epoch == 0 => {}
                        FrameKind::Data => {
                            if let Some(sink) = &to_stream
                                && sink.blocking_send(frame.payload).is_err()
                            {
                                to_stream = None;
                            }
                        }
                        FrameKind::SetClock => {
                            let Ok(raw) = <[u8; 8]>::try_from(frame.payload.as_ref()) else {
                                continue;
                            };
                            if let Some(set_clock) = set_clock {
                                set_clock(i64::from_le_bytes(raw));
                            }
                        }
                        FrameKind::Ping => send(Outgoing {
                            epoch,
                            frame: wire(FrameKind::Pong, epoch, &frame.payload),
                            pad: false,
                        }),
                        FrameKind::BenchPull => {
                            let Ok(raw) = <[u8; 8]>::try_from(frame.payload.as_ref()) else {
                                continue;
                            };
                            let left = u64::from_le_bytes(raw).min(64 << 30);
                            let tx = out_tx.clone();
                            let pull_epoch = epoch;
                            std::thread::spawn(move || bench_pull(left, pull_epoch, &tx));
                        }
                        FrameKind::BulkData => bulk.deliver(epoch, &frame.payload),
                        FrameKind::Discard
                        | FrameKind::HelloAck
                        | FrameKind::BenchPullDone
                        | FrameKind::Pong
                        | FrameKind::BulkAck => {}
                    }
                }
            }
        })
        .expect("spawn link reader thread");
    stats
}

/// Sends `left` bytes of Discard frames, then BenchPullDone.
fn bench_pull(mut left: u64, epoch: u32, tx: &mpsc::Sender<Outgoing>) {
    let full = wire(FrameKind::Discard, epoch, &vec![0u8; SEND_PAYLOAD]);
    while left > 0 {
        let n = left.min(SEND_PAYLOAD as u64) as usize;
        let frame = if n == SEND_PAYLOAD {
            full.clone()
        } else {
            wire(FrameKind::Discard, epoch, &vec![0u8; n])
        };
        if tx
            .blocking_send(Outgoing {
                epoch,
                frame,
                pad: false,
            })
            .is_err()
        {
            return;
        }
        left -= n as u64;
    }
    let done = wire(FrameKind::BenchPullDone, epoch, &[]);
    let _ = tx.blocking_send(Outgoing {
        epoch,
        frame: done,
        pad: false,
    });
}

/// Creates the stream for a new epoch and hands it to the server. Returns
/// the sink for the epoch's inbound Data payloads.
fn start_session(
    epoch: u32,
    out_tx: mpsc::Sender<Outgoing>,
    bulk: BulkPort,
    incoming: &mpsc::Sender<LinkStream>,
) -> mpsc::Sender<Bytes> {
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(READ_QUEUE_FRAMES);
    let stream = LinkStream {
        epoch,
        inbound: in_rx,
        current: Bytes::new(),
        outbound: PollSender::new(out_tx),
        bulk: Some(bulk),
    };
    let _ = incoming.try_send(stream);
    in_tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream as StdUnixStream;

    /// A guest served over one end of a socketpair; returns the host end
    /// and the stream of server-side connections.
    fn guest_pair() -> (tokio::net::UnixStream, mpsc::Receiver<LinkStream>) {
        let (host, guest) = StdUnixStream::pair().unwrap();
        let guest_writer = guest.try_clone().unwrap();
        let (tx, rx) = mpsc::channel(4);
        serve_guest_port(guest, guest_writer, tx, None);
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
        // Larger than one frame, in both directions.
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        guest_stream.write_all(&big).await.unwrap();
        let mut got = vec![0u8; big.len()];
        host_stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        host_stream.write_all(&big).await.unwrap();
        let mut got = vec![0u8; big.len()];
        guest_stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        assert!(link.ping(Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn bulk_uploads_arrive_whole_and_in_order_under_credit() {
        use crate::bulk::BULK_WINDOW;
        use tonic::transport::server::Connected;
        let (host, mut incoming) = guest_pair();
        let link = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        let guest_stream = incoming.recv().await.unwrap();
        let info = guest_stream.connect_info();
        let port = info.bulk.clone().expect("guest streams carry a bulk port");
        let mut sender = link.open_bulk().expect("same version").unwrap();
        let id = sender.id();
        // Several windows: the sender only finishes if acknowledgements
        // keep granting credit.
        let total = 3 * BULK_WINDOW as usize + 12_345;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_buf = received.clone();
        let transfer = port
            .open(
                info.epoch,
                id,
                Box::new(move |bytes: &[u8]| {
                    sink_buf.lock().unwrap().extend_from_slice(bytes);
                    true
                }),
            )
            .await
            .unwrap();
        assert!(matches!(
            port.open(info.epoch, id, Box::new(|_: &[u8]| true)).await,
            Err(crate::bulk::BulkOpenError::IdInUse(_))
        ));
        let send = async {
            sender.ready().await.unwrap();
            sender.send(&data).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(30), send)
            .await
            .expect("credit kept flowing");
        // The sink runs on the reader thread; a ping answered after the
        // data proves every frame went through it.
        link.ping(Duration::from_secs(10)).await.unwrap();
        assert_eq!(transfer.taken(), Some(total as u64));
        let got = received.lock().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(*got == data, "bytes arrived out of order or changed");
        drop(transfer);
        drop(guest_stream);
    }

    static CLOCK_SEEN: AtomicU64 = AtomicU64::new(0);

    fn record_clock(unix_time_ns: i64) {
        CLOCK_SEEN.store(unix_time_ns as u64, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn the_handshake_sets_the_guest_clock_before_any_data() {
        let (host, guest) = StdUnixStream::pair().unwrap();
        let guest_writer = guest.try_clone().unwrap();
        let (tx, mut incoming) = mpsc::channel(4);
        serve_guest_port(guest, guest_writer, tx, Some(record_clock));
        host.set_nonblocking(true).unwrap();
        let host = tokio::net::UnixStream::from_std(host).unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut link = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(link.clock_set_by_link());
        let mut host_stream = link.take_stream().unwrap();
        let mut guest_stream = incoming.recv().await.unwrap();
        host_stream.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        guest_stream.read_exact(&mut buf).await.unwrap();
        // Data sent after the handshake arrives after the clock was set.
        let seen = CLOCK_SEEN.load(Ordering::SeqCst);
        assert!(
            seen >= before && seen < before + 5_000_000_000,
            "clock {seen} vs {before}"
        );
    }

    #[tokio::test]
    async fn a_second_connection_replaces_the_first_despite_stale_bytes() {
        let (host_raw, guest_raw) = StdUnixStream::pair().unwrap();
        let guest_writer = guest_raw.try_clone().unwrap();
        let (tx, mut incoming) = mpsc::channel(4);
        serve_guest_port(guest_raw, guest_writer, tx, None);
        // Keep a duplicate of the host end to play the "next" connection on
        // the same byte stream, like QEMU's chardev does.
        let second = host_raw.try_clone().unwrap();
        host_raw.set_nonblocking(true).unwrap();
        let host = tokio::net::UnixStream::from_std(host_raw).unwrap();
        let mut first = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        let first_stream = first.take_stream().unwrap();
        let mut first_guest = incoming.recv().await.unwrap();
        // Leave a half frame behind, as a host killed mid-write would.
        let half = frame::encode(FrameKind::Data, first.epoch(), &[7u8; 5000]);
        let mut raw = second.try_clone().unwrap();
        raw.write_all(&half[..1000]).unwrap();
        drop(first_stream);
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
        // The first server connection was ended: its reads reach EOF.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), first_guest.read_to_end(&mut rest))
            .await
            .expect("old stream ended")
            .unwrap();
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

    #[test]
    fn a_link_error_is_found_through_the_io_errors_wrapping_it() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport failed")]
        struct Transport(#[source] std::io::Error);
        let wrapped = Transport(std::io::Error::other(LinkError::HandshakeTimeout(
            Duration::from_secs(1),
        )));
        assert!(matches!(
            LinkError::find_in(&wrapped),
            Some(LinkError::HandshakeTimeout(_))
        ));
        let unrelated = Transport(std::io::Error::other("refused"));
        assert!(LinkError::find_in(&unrelated).is_none());
    }

    #[tokio::test]
    async fn a_stream_transport_ends_its_session_at_eof() {
        let (host, guest) = StdUnixStream::pair().unwrap();
        let guest_writer = guest.try_clone().unwrap();
        let (tx, mut incoming) = mpsc::channel(4);
        serve_guest_stream(guest, guest_writer, tx, None);
        host.set_nonblocking(true).unwrap();
        let host = tokio::net::UnixStream::from_std(host).unwrap();
        let mut link = HostLink::establish(host, Duration::from_secs(5))
            .await
            .unwrap();
        let stream = link.take_stream().unwrap();
        let mut guest_stream = incoming.recv().await.unwrap();
        drop(stream);
        drop(link);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), guest_stream.read_to_end(&mut rest))
            .await
            .expect("guest stream ended at EOF")
            .unwrap();
    }
}
