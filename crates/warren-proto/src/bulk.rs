//! Bulk uploads: file bodies sent as link frames beside HTTP/2.
//!
//! Why: under software emulation the guest CPU is what limits an upload,
//! and HTTP/2 + protobuf on top of the link frames cost about half of it
//! (64 MiB to the guest's /dev/null: ~118 MiB/s through gRPC against ~207
//! MiB/s of raw frames). A bulk upload sends the bytes as
//! [`FrameKind::BulkData`] frames tagged with a transfer id the host picks;
//! the `WriteFile` call still carries the header, the end marker and the
//! answer, so validation, errors and the commit stay where they were.
//!
//! On the guest, the link's reader thread hands each frame straight to the
//! transfer's sink (which writes it to the file): no thread hand-off per
//! frame, which under emulation cost as much as the bytes themselves.
//!
//! Flow control is by credit: the guest acknowledges the bytes its sink
//! has taken ([`FrameKind::BulkAck`], cumulative) and the host never runs
//! more than [`BULK_WINDOW`] bytes ahead of the last acknowledgement. The
//! first acknowledgement (of zero bytes) is the guest saying its sink
//! exists, so no data frame can arrive before it. Data for an unknown (or
//! failed) transfer is dropped.
//!
//! Ordering: the link is one ordered byte stream read by one thread, so
//! every data frame the host sent before the call's end marker has been
//! through the sink by the time the gRPC server sees that marker.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::frame::FrameKind;
use crate::link::{LinkError, Outgoing, SEND_PAYLOAD, wire};

/// Bytes the host may send beyond the guest's last acknowledgement. Big
/// enough to cover an acknowledgement's round trip at full speed (~0.4 ms
/// at ~200 MiB/s is well under 1 MiB), small enough to bound guest memory.
pub const BULK_WINDOW: u64 = 4 << 20;
/// The guest acknowledges after taking this many more bytes.
pub const BULK_ACK_EVERY: u64 = 512 << 10;
/// Bytes of the transfer id in front of every data frame.
pub const BULK_ID_LEN: usize = 8;
/// Data bytes per frame: frames fill one virtio-serial write.
pub const BULK_CHUNK: usize = SEND_PAYLOAD - BULK_ID_LEN;

/// Splits a data frame's payload into transfer id and bytes; `None` if it
/// is too short to hold an id.
pub fn decode_data(payload: &Bytes) -> Option<(u64, Bytes)> {
    let id = u64::from_le_bytes(payload.get(..BULK_ID_LEN)?.try_into().ok()?);
    Some((id, payload.slice(BULK_ID_LEN..)))
}

/// The payload of an acknowledgement.
pub fn encode_ack(id: u64, taken: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..].copy_from_slice(&taken.to_le_bytes());
    out
}

/// Decodes an acknowledgement (bytes from the guest: untrusted); `None`
/// unless it is exactly 16 bytes.
pub fn decode_ack(payload: &[u8]) -> Option<(u64, u64)> {
    let raw: &[u8; 16] = payload.try_into().ok()?;
    let id = u64::from_le_bytes(raw[..8].try_into().ok()?);
    let taken = u64::from_le_bytes(raw[8..].try_into().ok()?);
    Some((id, taken))
}

/// Why a bulk transfer could not be opened on the guest.
#[derive(Debug, thiserror::Error)]
pub enum BulkOpenError {
    /// Another transfer of this connection uses the id.
    #[error("bulk transfer id {0:#x} is already in use on this connection")]
    IdInUse(u64),
    /// The host connection this call came over has ended.
    #[error("the host connection ended before the bulk transfer could start")]
    ConnectionEnded,
}

/// Takes a transfer's bytes, in order, on the link's reader thread; returns
/// `false` to give the transfer up (e.g. the file write failed), after
/// which its frames are dropped. It runs while the link waits, so it must
/// not block for long.
pub type BulkSink = Box<dyn FnMut(&[u8]) -> bool + Send>;

struct Receiving {
    epoch: u32,
    sink: BulkSink,
    taken: u64,
    acked: u64,
}

struct PortInner {
    receivers: Mutex<HashMap<u64, Receiving>>,
    out_tx: mpsc::Sender<Outgoing>,
}

/// Guest side: the bulk transfers of one link. Each gRPC connection sees
/// its link's port through [`crate::link::LinkInfo`].
#[derive(Clone)]
pub struct BulkPort {
    inner: Arc<PortInner>,
}

impl std::fmt::Debug for BulkPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkPort").finish_non_exhaustive()
    }
}

impl BulkPort {
    pub(crate) fn new(out_tx: mpsc::Sender<Outgoing>) -> Self {
        Self {
            inner: Arc::new(PortInner {
                receivers: Mutex::new(HashMap::new()),
                out_tx,
            }),
        }
    }

    fn receivers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Receiving>> {
        self.inner
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers transfer `id` of connection `epoch` with its sink and
    /// tells the host to start sending (the first acknowledgement). The
    /// transfer lasts until the returned handle is dropped.
    pub async fn open(
        &self,
        epoch: u32,
        id: u64,
        sink: BulkSink,
    ) -> Result<BulkTransfer, BulkOpenError> {
        match self.receivers().entry(id) {
            Entry::Occupied(_) => return Err(BulkOpenError::IdInUse(id)),
            Entry::Vacant(slot) => {
                slot.insert(Receiving {
                    epoch,
                    sink,
                    taken: 0,
                    acked: 0,
                });
            }
        }
        let transfer = BulkTransfer {
            port: self.clone(),
            id,
            epoch,
        };
        let ready = Outgoing::frame(epoch, wire(FrameKind::BulkAck, epoch, &encode_ack(id, 0)));
        if self.inner.out_tx.send(ready).await.is_err() {
            return Err(BulkOpenError::ConnectionEnded);
        }
        Ok(transfer)
    }

    /// Hands a data frame's payload (of connection `epoch`) to its sink and
    /// acknowledges every [`BULK_ACK_EVERY`] bytes. Called by the link
    /// reader thread.
    pub(crate) fn deliver(&self, epoch: u32, payload: &Bytes) {
        let Some((id, data)) = decode_data(payload) else {
            return;
        };
        let ack = {
            let mut receivers = self.receivers();
            let Some(receiving) = receivers.get_mut(&id).filter(|r| r.epoch == epoch) else {
                return;
            };
            if !(receiving.sink)(&data) {
                receivers.remove(&id);
                return;
            }
            receiving.taken += data.len() as u64;
            if receiving.taken - receiving.acked < BULK_ACK_EVERY {
                return;
            }
            receiving.acked = receiving.taken;
            encode_ack(id, receiving.taken)
        };
        // Waits only if the writer's queue is full; the writer drains it on
        // its own thread.
        let _ = self.inner.out_tx.blocking_send(Outgoing::frame(
            epoch,
            wire(FrameKind::BulkAck, epoch, &ack),
        ));
    }
}

/// Guest side: one open bulk transfer. Dropping it unregisters the
/// transfer (and its sink); later frames for it are dropped.
pub struct BulkTransfer {
    port: BulkPort,
    id: u64,
    epoch: u32,
}

impl BulkTransfer {
    /// Bytes the sink has taken so far, or `None` if the sink gave the
    /// transfer up.
    pub fn taken(&self) -> Option<u64> {
        self.port
            .receivers()
            .get(&self.id)
            .filter(|r| r.epoch == self.epoch)
            .map(|r| r.taken)
    }
}

impl Drop for BulkTransfer {
    fn drop(&mut self) {
        let mut receivers = self.port.receivers();
        if receivers
            .get(&self.id)
            .is_some_and(|r| r.epoch == self.epoch)
        {
            receivers.remove(&self.id);
        }
    }
}

/// Host side: the credit of every open bulk transfer of one link.
#[derive(Default)]
pub(crate) struct BulkCredits {
    grants: Mutex<HashMap<u64, watch::Sender<Option<u64>>>>,
    closed: AtomicBool,
}

impl BulkCredits {
    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Sender<Option<u64>>>> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An acknowledgement arrived (from the guest: untrusted, so it only
    /// ever moves the credit of a transfer we opened, and never backwards).
    pub(crate) fn acknowledge(&self, payload: &[u8]) {
        let Some((id, taken)) = decode_ack(payload) else {
            return;
        };
        if let Some(grant) = self.grants().get(&id) {
            grant.send_if_modified(|current| {
                if current.is_none_or(|c| taken > c) {
                    *current = Some(taken);
                    true
                } else {
                    false
                }
            });
        }
    }

    /// The link ended: every waiting sender fails.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.grants().clear();
    }

    pub(crate) fn open(
        self: &Arc<Self>,
        id: u64,
        epoch: u32,
        out_tx: mpsc::Sender<Outgoing>,
    ) -> Result<BulkSender, LinkError> {
        let (tx, grant) = watch::channel(None);
        {
            let mut grants = self.grants();
            if self.closed.load(Ordering::Acquire) {
                return Err(LinkError::Closed);
            }
            grants.insert(id, tx);
        }
        Ok(BulkSender {
            credits: self.clone(),
            id,
            epoch,
            out_tx,
            grant,
            sent: 0,
        })
    }
}

/// Host side: the sending end of one bulk transfer (from
/// [`crate::link::HostLink::open_bulk`]). Dropping it forgets the transfer.
pub struct BulkSender {
    credits: Arc<BulkCredits>,
    id: u64,
    epoch: u32,
    out_tx: mpsc::Sender<Outgoing>,
    grant: watch::Receiver<Option<u64>>,
    sent: u64,
}

impl BulkSender {
    /// The transfer id to name in the call that announces the transfer.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits until the guest has acknowledged that `until` bytes may be in
    /// flight (`Some(0)` from the guest's first ack means "ready").
    async fn wait_credit(&mut self, until: u64) -> Result<(), LinkError> {
        self.grant
            .wait_for(|taken| taken.is_some_and(|t| until <= t.saturating_add(BULK_WINDOW)))
            .await
            .map(|_| ())
            .map_err(|_| LinkError::Closed)
    }

    /// Waits for the guest's receiver to exist.
    pub async fn ready(&mut self) -> Result<(), LinkError> {
        self.wait_credit(0).await
    }

    /// Sends `data`, waiting for credit as needed.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), LinkError> {
        for chunk in data.chunks(BULK_CHUNK) {
            self.wait_credit(self.sent + chunk.len() as u64).await?;
            let mut payload = Vec::with_capacity(BULK_ID_LEN + chunk.len());
            payload.extend_from_slice(&self.id.to_le_bytes());
            payload.extend_from_slice(chunk);
            self.out_tx
                .send(Outgoing::frame(
                    self.epoch,
                    wire(FrameKind::BulkData, self.epoch, &payload),
                ))
                .await
                .map_err(|_| LinkError::Closed)?;
            self.sent += chunk.len() as u64;
        }
        Ok(())
    }
}

impl Drop for BulkSender {
    fn drop(&mut self) {
        self.credits.grants().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_round_trip_and_reject_wrong_sizes() {
        assert_eq!(decode_ack(&encode_ack(7, 1 << 40)), Some((7, 1 << 40)));
        assert_eq!(decode_ack(&[0u8; 15]), None);
        assert_eq!(decode_ack(&[0u8; 17]), None);
    }

    #[test]
    fn data_frames_without_an_id_are_rejected() {
        assert!(decode_data(&Bytes::from_static(&[1, 2, 3])).is_none());
        let mut payload = 9u64.to_le_bytes().to_vec();
        payload.extend_from_slice(b"abc");
        let (id, data) = decode_data(&Bytes::from(payload)).unwrap();
        assert_eq!((id, &data[..]), (9, &b"abc"[..]));
    }

    #[tokio::test]
    async fn credit_never_moves_backwards_and_ends_with_the_link() {
        let credits = Arc::new(BulkCredits::default());
        let (out_tx, _out_rx) = mpsc::channel(4);
        let mut sender = credits.open(5, 1, out_tx).unwrap();
        credits.acknowledge(&encode_ack(5, 100));
        credits.acknowledge(&encode_ack(5, 50));
        credits.acknowledge(&encode_ack(6, 1 << 30));
        assert_eq!(*sender.grant.borrow(), Some(100));
        sender.ready().await.unwrap();
        credits.close();
        assert!(matches!(
            sender.wait_credit(BULK_WINDOW + 101).await,
            Err(LinkError::Closed)
        ));
        let (out_tx, _out_rx) = mpsc::channel(4);
        assert!(credits.open(8, 1, out_tx).is_err());
    }
}
