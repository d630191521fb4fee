//! The data node's host-path rules (`docs/ha-protocol.md` §17): it judges
//! its own front-end ([`crate::hostpath`]) and reports it in its heartbeats;
//! a primary that lost its front-end while its peer has one hands over as
//! in a planned switchover; a secondary without one never stands by itself
//! (`DataNode::maybe_stand`).

use super::{DataNode, Role};
use crate::hostpath::{FrontEndSample, default_front_end_links};
use crate::time::Instant;
use crate::types::NodeId;

impl DataNode {
    /// The kernel's report of the front-end NIC's link state (virtio-net's
    /// link status; with several front-end NICs, up when any is). Until the
    /// first report the node judges no host path and the rules never apply.
    pub fn set_front_end_nic(&mut self, now: Instant, up: bool) {
        let was = self.host_path.monitored().then(|| self.host_path.nic_up());
        self.host_path.set_nic_up(up);
        if was != Some(up) {
            self.update_host_path(now);
            self.host_path_handover(now);
            self.progress(now);
        }
    }

    /// True when this node's host path is known lost.
    pub fn host_path_lost(&self) -> bool {
        self.host_path.lost()
    }

    fn front_end_links(&self) -> u8 {
        match self.cfg.front_end_links {
            0 => default_front_end_links(self.cfg.links),
            mask => mask,
        }
    }

    pub(super) fn update_host_path(&mut self, now: Instant) {
        let sample = FrontEndSample::take(
            now,
            self.timing().failure_timeout,
            self.front_end_links(),
            self.host_path.nic_up(),
            &self.voter.knowledge[self.peer.index()],
            &self.voter.knowledge[NodeId::Witness.index()],
        );
        self.host_path.update(now, sample);
    }

    /// The peer is heard and its latest heartbeat says it cannot serve hosts.
    pub(super) fn peer_host_path_lost(&self, now: Instant) -> bool {
        let peer = &self.voter.knowledge[self.peer.index()];
        peer.alive(now, self.timing().failure_timeout)
            && peer
                .heartbeat
                .and_then(|h| h.host_path)
                .is_some_and(|p| !p.can_serve)
    }

    /// The peer is heard and its latest heartbeat says it can serve hosts.
    fn peer_host_path_ok(&self, now: Instant) -> bool {
        let peer = &self.voter.knowledge[self.peer.index()];
        peer.alive(now, self.timing().failure_timeout)
            && peer
                .heartbeat
                .and_then(|h| h.host_path)
                .is_some_and(|p| p.can_serve)
    }

    /// A serving primary whose front-end is lost hands over to a peer that
    /// reports one, as a planned switchover would (pre-flush, drain, flush,
    /// Handover), once it has been primary for the handover spacing. A peer
    /// that is not ready (not in sync, not connected) is waited for; a peer
    /// without a front-end, or one that does not report it, is not offered
    /// the role: with neither able to serve, nothing changes.
    pub(super) fn host_path_handover(&mut self, now: Instant) {
        if self.role != Role::Primary
            || !self.is_serving(now)
            || self.demote.is_some()
            || self.demote_preflush.is_some()
            || self.candidacy.is_some()
            || !self.host_path.lost()
            || !self.peer_host_path_ok(now)
            || now < self.primary_since + self.host_path.timing().handover_spacing
        {
            return;
        }
        if self.demote(now).is_ok() {
            // The old primary's role change names why.
            self.handover_reason = "host-path-lost";
        }
    }
}
