//! The witness: a member with no data that breaks ties. It grants leases and
//! votes under the same rules as a data node ([`crate::voter`]) and keeps
//! everything in RAM. After a restart it has forgotten its promises and
//! votes, so it grants nothing until (1) the promise horizon has passed since
//! boot, and (2) it has heard, in a heartbeat sent after it started (the
//! heartbeat echoes its incarnation), the persisted state of the data node
//! that is *not* asking: that node is the only other holder of what the
//! witness forgot.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::Error;
use crate::node::{Action, RoleChange, Timing};
use crate::time::{Duration, Instant};
use crate::types::{AnaState, DataState, EpochRecord, LinkId, MAX_LINKS, NodeId, Role};
use crate::voter::{VoteAsk, Voter};
use crate::wire::control::{Datagram, Heartbeat, Message, Refusal};

#[derive(Clone, Debug)]
pub struct WitnessConfig {
    /// A value that differs on every boot.
    pub incarnation: u64,
    pub links: u8,
    pub timing: Timing,
    pub history_len: usize,
}

impl WitnessConfig {
    pub fn new(incarnation: u64) -> Self {
        WitnessConfig {
            incarnation,
            links: 2,
            timing: Timing::DEFAULT,
            history_len: 64,
        }
    }
}

/// Snapshot for the witness console.
#[derive(Clone, Debug)]
pub struct WitnessStatus {
    pub epoch: u64,
    pub record: EpochRecord,
    pub links: u8,
    /// Time since each data node was last heard, per link.
    pub heard: [[Option<Duration>; MAX_LINKS]; 2],
    pub reachable: [bool; 2],
    /// Whether the witness may vote yet (restart guard passed and both data
    /// nodes heard since boot).
    pub settled: bool,
}

impl core::fmt::Display for WitnessStatus {
    /// Lines in the manner of `drbdadm status`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let primary = self.record.primary.map_or("none", |p| p.name());
        writeln!(
            f,
            "witness role:witness epoch:{} primary:{} settled:{}",
            self.epoch, primary, self.settled
        )?;
        for n in [NodeId::A, NodeId::B] {
            write!(f, "  {} reachable:{}", n, self.reachable[n.index()])?;
            for l in 0..self.links as usize {
                match self.heard[n.index()][l] {
                    Some(d) => write!(f, " link{}:{}ms", l, d.as_millis())?,
                    None => write!(f, " link{l}:never")?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

pub struct Witness {
    cfg: WitnessConfig,
    voter: Voter,
    next_heartbeat: Instant,
    history: VecDeque<RoleChange>,
    actions: Vec<Action>,
    bad_datagrams: u64,
}

impl Witness {
    pub fn new(cfg: WitnessConfig, now: Instant) -> Result<Witness, Error> {
        cfg.timing.validate()?;
        if cfg.links == 0 || cfg.links as usize > MAX_LINKS {
            return Err(Error::InvalidConfig("links must be 1..=4"));
        }
        let horizon = cfg.timing.promise_horizon();
        let voter = Voter::new(
            NodeId::Witness,
            0,
            None,
            None,
            EpochRecord::INITIAL,
            now,
            horizon,
        );
        let mut w = Witness {
            cfg,
            voter,
            next_heartbeat: now,
            history: VecDeque::new(),
            actions: Vec::new(),
            bad_datagrams: 0,
        };
        w.push_change(now, "boot");
        w.actions.push(Action::AnaChanged(AnaState::Inaccessible));
        Ok(w)
    }

    fn push_change(&mut self, now: Instant, reason: &'static str) {
        let c = RoleChange {
            at: now,
            role: Role::Witness,
            epoch: self.voter.record.epoch,
            reason,
        };
        if self.history.len() >= self.cfg.history_len.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(c);
        self.actions.push(Action::RoleChanged(c));
    }

    pub fn epoch(&self) -> u64 {
        self.voter.record.epoch
    }
    pub fn record(&self) -> EpochRecord {
        self.voter.record
    }
    pub fn history(&self) -> impl Iterator<Item = &RoleChange> {
        self.history.iter()
    }
    pub fn next_deadline(&self) -> Instant {
        self.next_heartbeat
    }
    pub fn bad_datagrams(&self) -> u64 {
        self.bad_datagrams
    }
    pub fn drain_actions(&mut self) -> alloc::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    fn send(&mut self, to: NodeId, link: LinkId, message: Message) {
        let dg = Datagram {
            sender: NodeId::Witness,
            link,
            epoch: self.voter.epoch,
            message,
        };
        self.actions.push(Action::SendDatagram {
            to,
            link,
            bytes: dg.emit(),
        });
    }

    pub fn tick(&mut self, now: Instant) {
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.cfg.timing.heartbeat_interval;
        for to in [NodeId::A, NodeId::B] {
            let hb = Heartbeat {
                role: Role::Witness,
                data_state: DataState::Inconsistent,
                peer_state: DataState::Inconsistent,
                flags: 0,
                voted_for: self.voter.voted_for,
                vote_outdated: self.voter.vote_outdated,
                record: self.voter.record,
                incarnation: self.cfg.incarnation,
                echo: self.voter.knowledge[to.index()]
                    .heartbeat
                    .map_or(0, |h| h.incarnation),
                host_path: None,
            };
            for l in 0..self.cfg.links {
                self.send(to, LinkId(l), Message::Heartbeat(hb));
            }
        }
    }

    fn observe_record(&mut self, now: Instant, rec: EpochRecord) {
        let valid = rec.primary.is_none_or(|p| p.is_data_node())
            && (rec.primary.is_none() || rec.primary != rec.outdated);
        if valid && self.voter.observe_record(rec) {
            self.push_change(now, "new-epoch");
        }
    }

    pub fn on_datagram(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        let dg = match Datagram::parse(bytes) {
            Ok(dg) if dg.sender.is_data_node() && (link.0 as usize) < MAX_LINKS => dg,
            _ => {
                self.bad_datagrams += 1;
                return;
            }
        };
        let k = &mut self.voter.knowledge[dg.sender.index()];
        k.last_heard[link.0 as usize] = Some(now);
        k.epoch = k.epoch.max(dg.epoch);
        match dg.message {
            Message::Heartbeat(hb) => {
                // Only a heartbeat sent after this witness started tells the
                // sender's current persisted state.
                if hb.echo == self.cfg.incarnation {
                    self.voter.knowledge[dg.sender.index()].heartbeat = Some(hb);
                }
                self.voter.observe_epoch(dg.epoch);
                self.observe_record(now, hb.record);
            }
            Message::LeaseRequest { round, record } => {
                if record.primary == Some(dg.sender) {
                    self.observe_record(now, record);
                }
                self.voter.observe_epoch(dg.epoch);
                let decision = self
                    .voter
                    .decide_lease(dg.sender, dg.epoch, &record, true, false);
                if decision.is_ok() {
                    self.voter.promise = Some((dg.sender, now));
                }
                let reply = Message::LeaseReply {
                    round,
                    granted: decision.is_ok(),
                    refusal: decision.err().unwrap_or(Refusal::None),
                };
                self.send(dg.sender, link, reply);
            }
            Message::VoteRequest {
                outdated,
                data_state,
                reason,
                record,
            } => {
                let ask = VoteAsk {
                    candidate: dg.sender,
                    epoch: dg.epoch,
                    outdated,
                    data_state,
                    reason,
                    record,
                };
                self.observe_record(now, record);
                let decision =
                    self.voter
                        .decide_vote(now, self.cfg.timing.promise_horizon(), &ask, None);
                if decision.is_ok() {
                    self.voter.grant_vote(now, &ask);
                } else {
                    self.voter.observe_epoch(dg.epoch);
                }
                let reply = Message::VoteReply {
                    granted: decision.is_ok(),
                    refusal: decision.err().unwrap_or(Refusal::None),
                    record: self.voter.record,
                };
                self.send(dg.sender, link, reply);
            }
            Message::LeaseReply { .. }
            | Message::VoteReply { .. }
            | Message::Handover { .. }
            | Message::SwitchoverRequest => {}
        }
    }

    pub fn status(&self, now: Instant) -> WitnessStatus {
        let mut heard = [[None; MAX_LINKS]; 2];
        let mut reachable = [false; 2];
        for n in [NodeId::A, NodeId::B] {
            let k = &self.voter.knowledge[n.index()];
            for (l, t) in k.last_heard.iter().enumerate() {
                heard[n.index()][l] = t.map(|t| now.saturating_since(t));
            }
            reachable[n.index()] = k.alive(now, self.cfg.timing.failure_timeout);
        }
        WitnessStatus {
            epoch: self.voter.record.epoch,
            record: self.voter.record,
            links: self.cfg.links,
            heard,
            reachable,
            settled: now >= self.voter.promise_floor
                && self.voter.knowledge[0].heard_since_boot()
                && self.voter.knowledge[1].heard_since_boot(),
        }
    }
}
