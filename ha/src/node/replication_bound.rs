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

use super::ids::{Extent, Seq, WriteId};
use super::{Action, Content, DataNode, PendingWrite};
use crate::time::Instant;
use crate::wire::stream;

/// Replicated writes sent and not yet acknowledged: the range each wrote,
/// and the bytes they put on the stream.
#[derive(Debug, Default)]
pub(super) struct Unacked {
    ranges: BTreeMap<Seq, Extent>,
    wire: BTreeMap<Seq, u64>,
    wire_bytes: u64,
}

impl Unacked {
    pub(super) fn insert(&mut self, seq: Seq, range: Extent, wire_bytes: u64) {
        self.ranges.insert(seq, range);
        if let Some(old) = self.wire.insert(seq, wire_bytes) {
            self.wire_bytes -= old;
        }
        self.wire_bytes += wire_bytes;
    }
    pub(super) fn remove(&mut self, seq: &Seq) -> Option<Extent> {
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
    /// The range of each.
    pub(super) fn values(&self) -> impl Iterator<Item = &Extent> {
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
    pub(super) fn hold_for_stream(
        &mut self,
        id: WriteId,
        w: &PendingWrite,
        from_queue: bool,
    ) -> bool {
        if !self.stream_ready() || !self.peer_takes(w) {
            return false;
        }
        let degraded_ok = self.peer_degraded() && !self.recovering();
        let full = !self.unacked.is_empty()
            && self.unacked.wire_bytes() + self.replication_wire_bytes(w)
                > self.cfg.max_unacked_bytes;
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

/// The replication stream's TCP timers, derived from the pair's timing so
/// that a slow timing (under TCG) does not abort streams that are merely
/// slow, and a fast one notices a dead peer's half-open stream soon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTimers {
    /// Wait between connection attempts: one heartbeat interval.
    pub reconnect: crate::time::Duration,
    /// TCP keep-alive period on an idle stream: half the failure timeout,
    /// so that an idle stream's peer is probed before it would be failed.
    pub keep_alive: crate::time::Duration,
    /// A stream that received nothing (data, acknowledgement or keep-alive
    /// answer) for this long is aborted: twice the failure timeout, after
    /// the heartbeats have decided about the peer (a peer-outdated election
    /// does not wait for it).
    pub abort: crate::time::Duration,
}

impl super::Timing {
    pub fn stream_timers(&self) -> StreamTimers {
        let timeout = self.failure_timeout.as_micros();
        StreamTimers {
            reconnect: self.heartbeat_interval,
            keep_alive: crate::time::Duration::from_micros(timeout / 2),
            abort: crate::time::Duration::from_micros(2 * timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Timing;
    use crate::time::Duration;

    #[test]
    fn stream_timers_follow_the_timing() {
        let t = Timing::DEFAULT.stream_timers();
        assert_eq!(t.reconnect, Duration::from_millis(50));
        assert_eq!(t.keep_alive, Duration::from_millis(250));
        assert_eq!(t.abort, Duration::from_millis(1000));
        let tcg = Timing {
            heartbeat_interval: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(2000),
            ..Timing::DEFAULT
        }
        .stream_timers();
        assert_eq!(tcg.reconnect, Duration::from_millis(100));
        assert_eq!(tcg.keep_alive, Duration::from_millis(1000));
        assert_eq!(tcg.abort, Duration::from_millis(4000));
    }
}

impl DataNode {
    /// During a recovery (the Outdated peer resynced, its acknowledgement
    /// needed again) a write or flush the peer leaves unanswered for the
    /// failure timeout ends the recovery: the stream is closed, the peer
    /// stays Outdated, the writes complete on this node (their regions stay
    /// marked for the next resync). Without this only the stream's TCP
    /// abort would release them. True when it did.
    pub(super) fn recovery_stuck(&mut self, now: Instant) -> bool {
        if !self.recovering() || !self.stream.connected {
            return false;
        }
        let timeout = self.timing().failure_timeout;
        let stuck = self
            .writes
            .values()
            .any(|w| w.needs_peer && !w.peer_acked && now.saturating_since(w.at) >= timeout)
            || self.flushes.peer_stuck(now, timeout);
        if !stuck {
            return false;
        }
        self.counters.stuck_recoveries += 1;
        self.actions.push(Action::CloseStream);
        self.on_stream_closed(now);
        true
    }
}
