//! Flush tracking: every flush of the local disk the node asked for, why,
//! and whether the peer's disk has flushed too.
//!
//! A flush that needs the peer goes out as a Flush frame numbered with its
//! [`FlushId`], once per connection (a new connection sends it again: the
//! peer's flush on the old one may not cover the writes it took there); the
//! peer's FlushAck carries the number back.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::IoResult;
use super::ids::FlushId;
use crate::time::{Duration, Instant};

/// Why a flush was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushPurpose {
    /// A host Flush command (the kernel's id).
    Host(u64),
    /// A clean cycle: bits can be cleared once both disks flushed.
    Clean,
    /// Secondary: a Flush frame from the primary, which numbered it so.
    Peer(FlushId),
    /// A primary asked to hand over, while it still serves: most of what
    /// the handover's own flush would write is then on disk already.
    PreHandover,
    /// A drained primary before it hands over.
    Handover,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingFlush {
    pub(crate) purpose: FlushPurpose,
    pub(crate) at: Instant,
    /// The local disk's outcome, once it finished.
    pub(crate) local: Option<bool>,
    pub(crate) peer_acked: bool,
    pub(crate) needs_peer: bool,
    /// Sent to the peer on the current connection.
    pub(crate) sent: bool,
}

impl PendingFlush {
    /// Both disks flushed.
    pub(crate) fn done_on_both(&self) -> bool {
        self.local == Some(true) && self.peer_acked
    }
}

/// The flushes under way.
#[derive(Debug)]
pub(crate) struct Flushes {
    pending: BTreeMap<FlushId, PendingFlush>,
    next: FlushId,
}

impl Default for Flushes {
    fn default() -> Flushes {
        Flushes {
            pending: BTreeMap::new(),
            next: FlushId(1),
        }
    }
}

impl Flushes {
    /// Starts a flush; the caller asks the disk for it.
    pub(crate) fn start(
        &mut self,
        now: Instant,
        purpose: FlushPurpose,
        needs_peer: bool,
    ) -> FlushId {
        let flush = self.next;
        self.next = FlushId(flush.0 + 1);
        self.pending.insert(
            flush,
            PendingFlush {
                purpose,
                at: now,
                local: None,
                peer_acked: false,
                needs_peer,
                sent: false,
            },
        );
        flush
    }

    pub(crate) fn get(&self, flush: FlushId) -> Option<&PendingFlush> {
        self.pending.get(&flush)
    }

    pub(crate) fn remove(&mut self, flush: FlushId) -> Option<PendingFlush> {
        self.pending.remove(&flush)
    }

    /// The flushes to send to the peer now (they need it, and were neither
    /// sent on this connection nor acknowledged), marked sent.
    pub(crate) fn take_unsent(&mut self) -> Vec<FlushId> {
        let mut unsent = Vec::new();
        for (n, f) in self.pending.iter_mut() {
            if f.needs_peer && !f.sent && !f.peer_acked {
                f.sent = true;
                unsent.push(*n);
            }
        }
        unsent
    }

    /// The connection to the peer changed: whatever was sent is sent again.
    pub(crate) fn unsend_all(&mut self) {
        for f in self.pending.values_mut() {
            f.sent = false;
        }
    }

    /// The local disk finished `flush`; its purpose, if it is known.
    pub(crate) fn on_local_done(&mut self, flush: FlushId, ok: bool) -> Option<FlushPurpose> {
        let f = self.pending.get_mut(&flush)?;
        f.local = Some(ok);
        Some(f.purpose)
    }

    /// The peer acknowledged `flush`: counts only if sent on this
    /// connection.
    pub(crate) fn on_peer_ack(&mut self, flush: FlushId) {
        if let Some(f) = self.pending.get_mut(&flush)
            && f.sent
        {
            f.peer_acked = true;
        }
    }

    /// A host flush is under way.
    pub(crate) fn any_host(&self) -> bool {
        self.pending
            .values()
            .any(|f| matches!(f.purpose, FlushPurpose::Host(_)))
    }

    /// From now on the peer counts as UpToDate: a host flush admitted
    /// without it completes only once the peer flushed too.
    pub(crate) fn host_flushes_need_peer(&mut self) {
        for f in self.pending.values_mut() {
            if matches!(f.purpose, FlushPurpose::Host(_)) && !f.needs_peer {
                f.needs_peer = true;
                f.sent = false;
            }
        }
    }

    /// A flush has waited for the peer for `timeout` or longer.
    pub(crate) fn peer_stuck(&self, now: Instant, timeout: Duration) -> bool {
        self.pending
            .values()
            .any(|f| f.needs_peer && !f.peer_acked && now.saturating_since(f.at) >= timeout)
    }

    /// Removes the host flushes that are done and returns them (the host's
    /// id and result): the local disk failed, or it flushed and the peer
    /// did too, or the peer is not needed (`peer_optional`: the record
    /// names it Outdated).
    pub(crate) fn take_completed_host(&mut self, peer_optional: bool) -> Vec<(u64, IoResult)> {
        let done: Vec<(FlushId, u64, IoResult)> = self
            .pending
            .iter()
            .filter_map(|(n, f)| {
                let FlushPurpose::Host(id) = f.purpose else {
                    return None;
                };
                match f.local {
                    Some(false) => Some((*n, id, IoResult::MediaError)),
                    Some(true) if f.peer_acked || !f.needs_peer || peer_optional => {
                        Some((*n, id, IoResult::Ok))
                    }
                    _ => None,
                }
            })
            .collect();
        done.into_iter()
            .map(|(n, id, result)| {
                self.pending.remove(&n);
                (id, result)
            })
            .collect()
    }

    /// The node stops being primary: every flush of its own ends; returns
    /// the hosts' flushes, to fail. The peer's (secondary) flushes go on.
    pub(crate) fn end_own(&mut self) -> Vec<u64> {
        let host: Vec<u64> = self
            .pending
            .values()
            .filter_map(|f| match f.purpose {
                FlushPurpose::Host(id) => Some(id),
                _ => None,
            })
            .collect();
        self.pending
            .retain(|_, f| matches!(f.purpose, FlushPurpose::Peer(_)));
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn flushes_are_numbered_from_one() {
        let mut f = Flushes::default();
        assert_eq!(f.start(at(0), FlushPurpose::Clean, true), FlushId(1));
        assert_eq!(f.start(at(0), FlushPurpose::Host(9), true), FlushId(2));
        f.remove(FlushId(1));
        assert_eq!(
            f.start(at(0), FlushPurpose::Host(10), true),
            FlushId(3),
            "never reused"
        );
    }

    #[test]
    fn each_flush_goes_to_the_peer_once_per_connection() {
        let mut f = Flushes::default();
        let a = f.start(at(0), FlushPurpose::Host(1), true);
        let _alone = f.start(at(0), FlushPurpose::Host(2), false);
        let c = f.start(at(0), FlushPurpose::Clean, true);
        assert_eq!(f.take_unsent(), [a, c], "not the one that needs no peer");
        assert!(f.take_unsent().is_empty());
        f.on_peer_ack(a);
        f.unsend_all();
        assert_eq!(f.take_unsent(), [c], "acknowledged: not sent again");
    }

    #[test]
    fn an_ack_counts_only_for_a_flush_sent_on_this_connection() {
        let mut f = Flushes::default();
        let a = f.start(at(0), FlushPurpose::Host(1), true);
        f.on_peer_ack(a);
        assert!(!f.get(a).unwrap().peer_acked, "never sent");
        f.take_unsent();
        f.unsend_all();
        f.on_peer_ack(a);
        assert!(!f.get(a).unwrap().peer_acked, "sent on an older connection");
        f.take_unsent();
        f.on_peer_ack(a);
        assert!(f.get(a).unwrap().peer_acked);
        f.on_peer_ack(FlushId(77));
    }

    #[test]
    fn a_host_flush_completes_after_both_disks_or_a_local_failure() {
        let mut f = Flushes::default();
        let both = f.start(at(0), FlushPurpose::Host(1), true);
        let failed = f.start(at(0), FlushPurpose::Host(2), true);
        let alone = f.start(at(0), FlushPurpose::Host(3), false);
        let clean = f.start(at(0), FlushPurpose::Clean, true);
        f.take_unsent();
        assert!(f.take_completed_host(false).is_empty(), "no disk finished");
        for n in [both, alone, clean] {
            assert!(f.on_local_done(n, true).is_some());
        }
        assert_eq!(f.on_local_done(failed, false), Some(FlushPurpose::Host(2)));
        assert_eq!(
            f.take_completed_host(false),
            [(2, IoResult::MediaError), (3, IoResult::Ok)]
        );
        f.on_peer_ack(both);
        f.on_peer_ack(clean);
        assert_eq!(f.take_completed_host(false), [(1, IoResult::Ok)]);
        assert!(f.get(clean).unwrap().done_on_both(), "not a host's: stays");
    }

    #[test]
    fn without_the_peer_a_host_flush_completes_on_the_local_disk() {
        let mut f = Flushes::default();
        let n = f.start(at(0), FlushPurpose::Host(5), true);
        f.on_local_done(n, true);
        assert!(f.take_completed_host(false).is_empty());
        assert_eq!(f.take_completed_host(true), [(5, IoResult::Ok)]);
    }

    #[test]
    fn a_peer_back_in_sync_must_flush_what_the_host_asked_meanwhile() {
        let mut f = Flushes::default();
        let n = f.start(at(0), FlushPurpose::Host(5), false);
        assert!(f.take_unsent().is_empty());
        f.host_flushes_need_peer();
        assert_eq!(f.take_unsent(), [n]);
        f.on_local_done(n, true);
        assert!(
            f.take_completed_host(false).is_empty(),
            "waits for the peer"
        );
    }

    #[test]
    fn a_flush_the_peer_leaves_unanswered_is_stuck_after_the_timeout() {
        let mut f = Flushes::default();
        let t = Duration::from_millis(100);
        f.start(at(10), FlushPurpose::Host(1), false);
        let n = f.start(at(10), FlushPurpose::Clean, true);
        assert!(!f.peer_stuck(at(109), t));
        assert!(f.peer_stuck(at(110), t));
        f.take_unsent();
        f.on_peer_ack(n);
        assert!(!f.peer_stuck(at(500), t));
    }

    #[test]
    fn losing_the_primary_role_ends_own_flushes_not_the_peers() {
        let mut f = Flushes::default();
        f.start(at(0), FlushPurpose::Host(1), true);
        let clean = f.start(at(0), FlushPurpose::Clean, true);
        let peer = f.start(at(0), FlushPurpose::Peer(FlushId(40)), false);
        f.start(at(0), FlushPurpose::Host(2), true);
        assert!(f.any_host());
        assert_eq!(f.end_own(), [1, 2]);
        assert!(!f.any_host());
        assert!(f.get(clean).is_none());
        assert_eq!(
            f.on_local_done(peer, true),
            Some(FlushPurpose::Peer(FlushId(40)))
        );
    }
}
