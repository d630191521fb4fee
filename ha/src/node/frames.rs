//! Frames from the peer on the replication stream, one handler per kind.
//!
//! Each handler returns false when the frame breaks the protocol (the
//! stream is then reset); a frame the node refuses on its merits (a stale
//! epoch, a fenced write) is answered and counted instead.

use alloc::vec::Vec;

use super::apply::{Apply, ApplyKind};
use super::flushes::FlushPurpose;
use super::ids::{FlushId, Seq};
use super::{Action, Content, DataNode, Handshake, peer_size_view};
use crate::bitmap::Bitmap;
use crate::generations::Decision;
use crate::sizes::Sizes;
use crate::time::Instant;
use crate::types::{EpochRecord, Role};
use crate::wire::stream::{AckStatus, Body, Frame, Hello};

impl DataNode {
    /// A frame from the peer; false if the stream must be reset.
    pub(super) fn on_frame(&mut self, now: Instant, f: Frame<'_>) -> bool {
        let (epoch, seq) = (f.epoch, f.seq);
        match f.body {
            Body::Hello(h) => return self.on_hello(now, h),
            Body::Config(rec) => self.on_config(now, rec),
            Body::Write {
                offset,
                data,
                force_unit_access,
            } => return self.on_write(now, epoch, Seq(seq), offset, data, force_unit_access),
            Body::WriteZeroes { offset, len } => {
                return self.on_range_write(now, epoch, Seq(seq), offset, len, Content::Zeroes);
            }
            Body::Deallocate { offset, len } => {
                return self.on_range_write(now, epoch, Seq(seq), offset, len, Content::Deallocate);
            }
            Body::WriteAck { status } => self.on_write_ack(now, epoch, Seq(seq), status),
            Body::Bitmap {
                first_region,
                bit_count,
                bits,
            } => return self.on_bitmap(first_region, bit_count, bits),
            Body::BitmapDone => self.on_bitmap_done(now),
            Body::ResyncData { offset, data } => return self.on_resync_data(epoch, offset, data),
            Body::ResyncAck { offset, status, .. } => self.on_resync_ack(offset, status),
            Body::VerifyRequest {
                offset,
                len,
                digest,
            } => return self.on_verify_request(epoch, offset, len, digest),
            Body::VerifyReply { offset, equal, .. } => self.on_verify_reply(now, offset, equal),
            Body::Flush => self.on_flush(now, epoch, FlushId(seq)),
            Body::FlushAck { status } => self.on_flush_ack(epoch, FlushId(seq), status),
            Body::ResyncDone { current } => self.on_resync_done(epoch, current),
        }
        true
    }

    /// The peer's Hello: the handshake decides what becomes of both
    /// nodes' data.
    fn on_hello(&mut self, now: Instant, h: Hello) -> bool {
        self.last_peer_data_bytes = Some(h.data_bytes);
        let (verdict, size) = self.handshake_verdict(&h);
        if self.handshake != Some(verdict) {
            self.actions.push(Action::HandshakeDecided(Handshake {
                peer: self.peer,
                verdict,
                sizes: Sizes {
                    mine: self.size_view(),
                    peer: peer_size_view(&h),
                },
            }));
        }
        self.handshake = Some(verdict);
        self.refused_standing =
            matches!(verdict.decision, Decision::Refuse(_)) && self.role != Role::Primary;
        if matches!(verdict.decision, Decision::Refuse(_)) {
            // Nothing changes on either side; the stream is closed
            // (and the same verdict met again on every reconnection
            // until the operator resolves it).
            return false;
        }
        if self.agreed_bytes == 0
            && let Some(size) = size
        {
            // The first meeting fixes the namespace size for good.
            self.agreed_bytes = size;
            self.persist_superblock();
        }
        self.apply_verdict(now, &h, verdict.decision);
        self.stream.peer_hello = Some(h);
        self.stream.peer_bitmap = Some(Bitmap::new(self.data_regions()));
        if h.record == self.voter.record {
            self.peer_state = h.data_state;
        }
        if h.record.primary == Some(self.peer) {
            self.adopt_record(now, h.record);
        }
        if self.role == Role::Primary {
            // Writes submitted before the hello went unsent.
            let unsent: Vec<super::ids::WriteId> = self
                .writes
                .iter()
                .filter(|(_, w)| w.started && w.seq.is_none() && !w.peer_acked)
                .map(|(id, _)| *id)
                .collect();
            self.resend_writes(&unsent);
            self.send_pending_flushes();
        }
        true
    }

    fn on_config(&mut self, now: Instant, rec: EpochRecord) {
        if rec.primary == Some(self.peer) {
            self.adopt_record(now, rec);
        }
    }

    /// Secondary: refuses replicated write `seq` (not from our primary, or
    /// out of range).
    fn refuse_write(&mut self, seq: Seq) {
        self.counters.fenced_writes_refused += 1;
        let epoch = self.voter.epoch;
        self.send_frame(
            epoch,
            seq.0,
            Body::WriteAck {
                status: AckStatus::Fenced,
            },
        );
    }

    /// Secondary: a replicated host write.
    fn on_write(
        &mut self,
        now: Instant,
        epoch: u64,
        seq: Seq,
        offset: u64,
        data: &[u8],
        force_unit_access: bool,
    ) -> bool {
        if !self.accepts_replication(epoch, offset, data.len() as u64) {
            self.refuse_write(seq);
            return true;
        }
        self.become_inconsistent_if_outdated();
        let apply = Apply::data(
            ApplyKind::Write(seq),
            offset,
            data.to_vec(),
            force_unit_access,
        );
        if !self.enqueue_apply(apply) {
            return false;
        }
        self.stream.apply_arrivals.insert(seq.0, now);
        true
    }

    /// Secondary: a replicated Write Zeroes or Deallocate.
    fn on_range_write(
        &mut self,
        now: Instant,
        epoch: u64,
        seq: Seq,
        offset: u64,
        len: u64,
        content: Content,
    ) -> bool {
        if !self.accepts_replication(epoch, offset, len) {
            self.refuse_write(seq);
            return true;
        }
        self.become_inconsistent_if_outdated();
        let apply = Apply::range(ApplyKind::Write(seq), offset, len, content);
        if !self.enqueue_apply(apply) {
            return false;
        }
        self.stream.apply_arrivals.insert(seq.0, now);
        true
    }

    /// Primary: the peer wrote (or refused) replicated write `seq`.
    fn on_write_ack(&mut self, now: Instant, epoch: u64, seq: Seq, status: AckStatus) {
        if let Some(id) = self.seq_to_id.get(&seq).copied()
            && status == AckStatus::Ok
            && let Some(w) = self.writes.get_mut(&id)
        {
            w.peer_acked = true;
            self.stream.write_times.peer.record(now - w.at);
        }
        if status == AckStatus::Ok {
            self.unacked.remove(&seq);
        } else {
            self.observe_epoch(epoch);
            self.refused_by_outdated_peer(seq);
        }
    }

    /// Part of the peer's dirty bitmap; false if it lies beyond the disk.
    fn on_bitmap(&mut self, first_region: u64, bit_count: u32, bits: &[u8]) -> bool {
        // The peer's bitmap covers its own disk; bits beyond the
        // namespace are ignored (never set once a size is agreed).
        let peer_regions = self
            .stream
            .peer_hello
            .map_or(self.layout.region_count, |h| h.region_count);
        if first_region.saturating_add(bit_count as u64) > peer_regions {
            return false;
        }
        if let Some(b) = self.stream.peer_bitmap.as_mut() {
            b.import_or(first_region, bit_count as u64, bits);
        }
        true
    }

    /// The peer's whole bitmap arrived: a primary resyncs the peer from it.
    fn on_bitmap_done(&mut self, now: Instant) {
        // A peer found behind is first recorded Outdated; it sends
        // its bitmap again when it learns that record.
        if self.role == Role::Primary && (self.peer_behind.is_none() || self.peer_degraded()) {
            self.start_resync(now);
        }
    }

    /// Secondary: a region's content from the sync source.
    fn on_resync_data(&mut self, epoch: u64, offset: u64, data: &[u8]) -> bool {
        if !self.accepts_replication(epoch, offset, data.len() as u64) {
            let epoch = self.voter.epoch;
            self.send_frame(
                epoch,
                0,
                Body::ResyncAck {
                    offset,
                    len: data.len() as u32,
                    status: AckStatus::Fenced,
                },
            );
            return true;
        }
        self.become_inconsistent_if_outdated();
        self.enqueue_apply(Apply::data(ApplyKind::Resync, offset, data.to_vec(), true))
    }

    /// Secondary: the primary's digest of a region, to compare with ours
    /// once it is read (after the writes before it).
    fn on_verify_request(&mut self, epoch: u64, offset: u64, len: u32, digest: u64) -> bool {
        let rec = self.voter.record;
        let ok = self.role != Role::Primary
            && epoch == rec.epoch
            && rec.primary == Some(self.peer)
            && offset
                .checked_add(len as u64)
                .is_some_and(|e| e <= self.data_bytes())
            && !self.verify_checks.contains_key(&offset);
        if !ok {
            let epoch = self.voter.epoch;
            self.send_frame(
                epoch,
                0,
                Body::VerifyReply {
                    offset,
                    len,
                    equal: false,
                },
            );
            return true;
        }
        self.verify_checks.insert(offset, digest);
        let apply = Apply::range(ApplyKind::Verify, offset, len as u64, Content::Data);
        self.enqueue_apply(apply)
    }

    /// Secondary: the primary's flush `flush` must reach this disk too.
    fn on_flush(&mut self, now: Instant, epoch: u64, flush: FlushId) {
        let rec = self.voter.record;
        if self.role != Role::Primary && epoch == rec.epoch && rec.primary == Some(self.peer) {
            // Covers every write this node acknowledged: they
            // completed before this frame arrived.
            self.new_flush(now, FlushPurpose::Peer(flush), false);
        } else {
            let epoch = self.voter.epoch;
            self.send_frame(
                epoch,
                flush.0,
                Body::FlushAck {
                    status: AckStatus::Fenced,
                },
            );
        }
    }

    /// Primary: the peer flushed (or refused) flush `flush`.
    fn on_flush_ack(&mut self, epoch: u64, flush: FlushId, status: AckStatus) {
        if status == AckStatus::Ok {
            self.flushes.on_peer_ack(flush);
        } else {
            self.observe_epoch(epoch);
        }
    }

    /// Sync target: every region the source had to copy is here.
    fn on_resync_done(&mut self, epoch: u64, current: u64) {
        if self.voter.record.primary == Some(self.peer) && epoch == self.voter.record.epoch {
            self.resynced_in_epoch = Some(self.voter.record.epoch);
            self.resync_source_generation = current;
            // Our own dirty regions are now equal to the primary's.
            self.dirty.clear_all();
        }
    }
}
