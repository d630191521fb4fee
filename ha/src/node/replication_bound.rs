//! The bound on replicated data not yet acknowledged by the peer
//! (`Config::max_unacked_bytes`, `docs/ha-protocol.md` §8): what the kernel
//! holds for the stream (its outbox, the socket's buffer) never grows past
//! it, whatever the peer does.
//!
//! While the peer's acknowledgement is needed (in sync, or recovering), a
//! write that would pass the bound waits (back-pressure: the host's writes
//! slow to the pace of the peer's acknowledgements; a peer that stops
//! acknowledging is recorded Outdated after the failure timeout, as for any
//! write left unanswered). While the peer is recorded Outdated, the writes
//! complete without it: the stream is given up instead (closed), the
//! bitmap marks cover what the peer missed, and a resync copies it when the
//! stream is back.

use alloc::collections::BTreeMap;

use super::{Action, Content, DataNode, PendingWrite};
use crate::time::Instant;
use crate::wire::stream;

/// Replicated writes sent and not yet acknowledged: `seq → (offset, len)`,
/// and the bytes they put on the stream.
#[derive(Debug, Default)]
pub(super) struct Unacked {
    ranges: BTreeMap<u64, (u64, u64)>,
    wire: BTreeMap<u64, u64>,
    wire_bytes: u64,
}

impl Unacked {
    pub(super) fn insert(&mut self, seq: u64, range: (u64, u64), wire_bytes: u64) {
        self.ranges.insert(seq, range);
        if let Some(old) = self.wire.insert(seq, wire_bytes) {
            self.wire_bytes -= old;
        }
        self.wire_bytes += wire_bytes;
    }
    pub(super) fn remove(&mut self, seq: &u64) -> Option<(u64, u64)> {
        if let Some(wire) = self.wire.remove(seq) {
            self.wire_bytes -= wire;
        }
        self.ranges.remove(seq)
    }
    pub(super) fn clear(&mut self) {
        self.ranges.clear();
        self.wire.clear();
        self.wire_bytes = 0;
    }
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    /// `(offset, len)` of each.
    pub(super) fn values(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.ranges.values()
    }
    pub(super) fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }
}

impl DataNode {
    /// What write `w` puts on the stream beyond its frame header.
    pub(super) fn replication_wire_bytes(&self, w: &PendingWrite) -> u64 {
        match w.content {
            Content::Zeroes if self.peer_features() & stream::feature::WRITE_ZEROES != 0 => 0,
            Content::Deallocate => 0,
            Content::Zeroes | Content::Data => w.len,
        }
    }

    /// True when write `w` must wait for the peer's acknowledgements before
    /// it is issued (it is then queued).
    pub(super) fn hold_for_stream(&mut self, id: u64, w: &PendingWrite, from_queue: bool) -> bool {
        if !self.stream_ready() || !self.peer_takes(w) {
            return false;
        }
        let degraded_ok = self.peer_degraded() && !self.recovering();
        let full = !self.unacked.is_empty()
            && self.unacked.wire_bytes() + self.replication_wire_bytes(w) > self.cfg.max_unacked_bytes;
        let queue_ahead = !from_queue && !self.held_for_stream.is_empty();
        if !(full || queue_ahead) {
            return false;
        }
        if w.needs_peer && !degraded_ok {
            if from_queue {
                self.held_for_stream.push_front(id);
            } else {
                self.held_for_stream.push_back(id);
            }
            return true;
        }
        if full {
            // The peer is Outdated and its stream does not drain: give it up.
            self.stream_overflow = true;
        }
        false
    }

    /// Issues the writes that waited for acknowledgements, in order, as far
    /// as the bound allows; gives up a stream that overflowed.
    pub(super) fn relieve_stream(&mut self, now: Instant) {
        if self.stream_overflow {
            self.stream_overflow = false;
            if self.stream.connected {
                self.counters.stream_overflows += 1;
                self.actions.push(Action::CloseStream);
                self.on_stream_closed(now);
            }
        }
        while let Some(id) = self.held_for_stream.pop_front() {
            let before = self.held_for_stream.len();
            self.issue_write_from(id, true);
            if self.held_for_stream.len() > before {
                break;
            }
        }
    }
}
