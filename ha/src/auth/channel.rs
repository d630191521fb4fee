//! The authenticated control channel of one member: seals the control
//! datagrams and connection lists it sends (version 2, [`crate::wire::sealed`])
//! and decides which received ones are genuine, fresh and for it.
//!
//! Freshness without a disk: each member picks a random **session nonce** at
//! boot and puts it in every datagram; a receiver accepts a datagram only if
//! it **echoes the receiver's own current nonce** — so nothing sent before
//! the receiver's boot is accepted — and only if its sequence number is new
//! in the sender's session (a [`ReplayWindow`] per session of the sender
//! seen in this boot) — so nothing is accepted twice. A member learns what
//! to echo from the datagrams it receives: the nonce of the peer's session
//! whose datagram it last accepted, or, while it has accepted none, the
//! nonce of the last well-MACed datagram that did not echo its own (the
//! peer's first datagrams after either side booted). A datagram refused as
//! stale thus still teaches the receiver the sender's nonce, and the pair
//! is associated within two datagrams in each direction.
//!
//! A reply is bound to its request through the same rule: it was sent in
//! the requester's current session and never before accepted, and its
//! payload names the request (lease round, epoch).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use super::{Key, Keys, ReplayWindow};
use crate::types::{LinkId, NodeId};
use crate::wire::sealed::{AuthFields, Sealed, seal};

/// Sessions of one member remembered (with their replay windows): a member
/// that restarts more often than this during one boot of the receiver could
/// have its oldest session's datagrams replayed.
pub const SESSIONS_REMEMBERED: usize = 64;

/// Why a received datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a version-2 datagram of ours: wrong magic, version, length,
    /// reserved field or node code.
    Malformed,
    /// Its source address is not the configured address of the member it
    /// claims to be from on the link it came in on, or it names another link.
    WrongSource,
    /// Addressed to another member.
    Misdirected,
    /// The MAC is wrong: not made with the pair key, or altered.
    BadMac,
    /// It does not echo this member's current session nonce: sent before
    /// this boot (or before the sender heard this boot).
    OldSession,
    /// Its sequence number was already accepted in the sender's session, or
    /// is too old to tell.
    Replay,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::WrongSource,
        DropReason::Misdirected,
        DropReason::BadMac,
        DropReason::OldSession,
        DropReason::Replay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::WrongSource => "wrong-source",
            DropReason::Misdirected => "misdirected",
            DropReason::BadMac => "bad-mac",
            DropReason::OldSession => "old-session",
            DropReason::Replay => "replay",
        }
    }
}

/// Datagrams accepted and dropped, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    pub accepted: u64,
    pub dropped: [u64; 6],
}

impl ChannelCounters {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

/// `control: accepted N, dropped malformed N wrong-source N …` (one line).
impl fmt::Display for ChannelCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "control datagrams: accepted {}, dropped", self.accepted)?;
        for reason in DropReason::ALL {
            write!(f, " {} {}", reason.name(), self.dropped(reason))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Session {
    nonce: u64,
    window: ReplayWindow,
}

#[derive(Debug, Default)]
struct Peer {
    /// Sessions of this member seen in this boot, oldest first.
    sessions: VecDeque<Session>,
    /// The nonce of the session whose datagram was accepted last.
    current: Option<u64>,
    /// The nonce of the last well-MACed datagram that did not echo ours.
    candidate: Option<u64>,
    /// The last sequence number sent to this member.
    sent: u64,
}

/// One member's side of the authenticated control channel.
#[derive(Debug)]
pub struct ControlChannel {
    me: NodeId,
    key: Key,
    nonce: u64,
    peers: [Peer; 3],
    counters: ChannelCounters,
}

impl ControlChannel {
    /// `session_nonce`: this boot's nonce (non-zero, from a
    /// [`super::NonceSource`]).
    pub fn new(me: NodeId, keys: &Keys, session_nonce: u64) -> ControlChannel {
        ControlChannel {
            me,
            key: keys.control.clone(),
            nonce: session_nonce.max(1),
            peers: Default::default(),
            counters: ChannelCounters::default(),
        }
    }

    pub fn session_nonce(&self) -> u64 {
        self.nonce
    }

    pub fn counters(&self) -> ChannelCounters {
        self.counters
    }

    /// Seals a version-1 control datagram or connection list, as the state
    /// machines emit it, for `to`. `None` if `plain` is not one (a bug).
    pub fn seal(&mut self, to: NodeId, plain: &[u8]) -> Option<Vec<u8>> {
        let peer = &mut self.peers[to.index()];
        peer.sent += 1;
        let auth = AuthFields {
            receiver: to,
            nonce: self.nonce,
            echo: peer.current.or(peer.candidate).unwrap_or(0),
            seq: peer.sent,
        };
        seal(plain, &auth, &self.key).ok()
    }

    /// Checks a received datagram. `link`: where it came in; `source`: the
    /// member whose configured address on that link it came from (`None`:
    /// nobody's). Returns the version-1 message for the state machines.
    pub fn open(
        &mut self,
        link: LinkId,
        source: Option<NodeId>,
        bytes: &[u8],
    ) -> Result<Vec<u8>, DropReason> {
        let verdict = self.check(link, source, bytes);
        match &verdict {
            Ok(_) => self.counters.accepted += 1,
            Err(reason) => self.counters.dropped[*reason as usize] += 1,
        }
        verdict
    }

    fn check(
        &mut self,
        link: LinkId,
        source: Option<NodeId>,
        bytes: &[u8],
    ) -> Result<Vec<u8>, DropReason> {
        let sealed = Sealed::parse(bytes).map_err(|_| DropReason::Malformed)?;
        if sealed.sender == self.me {
            return Err(DropReason::Malformed);
        }
        if source != Some(sealed.sender) || sealed.link.is_some_and(|l| l != link.0) {
            return Err(DropReason::WrongSource);
        }
        if sealed.auth.receiver != self.me {
            return Err(DropReason::Misdirected);
        }
        if !sealed.verify(&self.key) {
            return Err(DropReason::BadMac);
        }
        let peer = &mut self.peers[sealed.sender.index()];
        let nonce = sealed.auth.nonce;
        if sealed.auth.echo != self.nonce {
            peer.candidate = Some(nonce);
            return Err(DropReason::OldSession);
        }
        let fresh = match peer.sessions.iter_mut().find(|s| s.nonce == nonce) {
            Some(session) => session.window.accept(sealed.auth.seq),
            None => {
                let mut window = ReplayWindow::default();
                let fresh = window.accept(sealed.auth.seq);
                if fresh {
                    if peer.sessions.len() == SESSIONS_REMEMBERED {
                        peer.sessions.pop_front();
                    }
                    peer.sessions.push_back(Session { nonce, window });
                }
                fresh
            }
        };
        if !fresh {
            return Err(DropReason::Replay);
        }
        peer.current = Some(nonce);
        Ok(sealed.to_plain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PairKey;
    use crate::types::{DataState, EpochRecord, Role};
    use crate::wire::connections::{ConnectionEntry, ConnectionList};
    use crate::wire::control::{Datagram, Heartbeat, Message, Refusal, flags};

    const FRONT: LinkId = LinkId(1);

    fn keys() -> Keys {
        Keys::derive(&PairKey::from_bytes([0x42; 32]))
    }

    fn channel(me: NodeId, nonce: u64) -> ControlChannel {
        ControlChannel::new(me, &keys(), nonce)
    }

    fn heartbeat_from(sender: NodeId, epoch: u64, serving: bool) -> Vec<u8> {
        Datagram {
            sender,
            link: FRONT,
            epoch,
            message: Message::Heartbeat(Heartbeat {
                role: Role::Primary,
                data_state: DataState::UpToDate,
                peer_state: DataState::Outdated,
                flags: if serving { flags::SERVING } else { 0 },
                voted_for: Some(sender),
                vote_outdated: Some(sender.peer()),
                record: EpochRecord {
                    epoch: epoch.saturating_sub(1),
                    primary: Some(sender),
                    outdated: Some(sender.peer()),
                },
                incarnation: 1,
                echo: 0,
                host_path: None,
            }),
        }
        .emit()
    }

    fn lease_reply_from(sender: NodeId, round: u64) -> Vec<u8> {
        Datagram {
            sender,
            link: FRONT,
            epoch: 3,
            message: Message::LeaseReply {
                round,
                granted: true,
                refusal: Refusal::None,
            },
        }
        .emit()
    }

    /// Sends one datagram from `from` to `to` and returns the verdict.
    fn deliver(
        from: &mut ControlChannel,
        to: &mut ControlChannel,
        plain: &[u8],
    ) -> (Vec<u8>, Result<Vec<u8>, DropReason>) {
        let sealed = from.seal(to.me, plain).unwrap();
        let verdict = to.open(FRONT, Some(from.me), &sealed);
        (sealed, verdict)
    }

    /// Exchanges datagrams until both sides accept each other's.
    fn associate(x: &mut ControlChannel, y: &mut ControlChannel) {
        for _ in 0..3 {
            let hb = heartbeat_from(x.me, 2, false);
            let _ = deliver(x, y, &hb);
            let hb = heartbeat_from(y.me, 2, false);
            let _ = deliver(y, x, &hb);
        }
        let hb = heartbeat_from(x.me, 2, false);
        assert!(deliver(x, y, &hb).1.is_ok());
        let hb = heartbeat_from(y.me, 2, false);
        assert!(deliver(y, x, &hb).1.is_ok());
    }

    #[test]
    fn members_associate_within_two_datagrams_each_way() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        let hb = heartbeat_from(NodeId::A, 2, false);
        assert_eq!(deliver(&mut a, &mut b, &hb).1, Err(DropReason::OldSession));
        let hb_b = heartbeat_from(NodeId::B, 2, false);
        assert_eq!(deliver(&mut b, &mut a, &hb_b).1, Ok(hb_b.clone()));
        assert_eq!(deliver(&mut a, &mut b, &hb).1, Ok(hb.clone()));
        assert_eq!(deliver(&mut b, &mut a, &hb_b).1, Ok(hb_b));
        assert_eq!(b.counters().dropped(DropReason::OldSession), 1);
        assert_eq!(b.counters().accepted, 1);
    }

    #[test]
    fn a_forged_mac_is_dropped() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        associate(&mut a, &mut b);
        // The attacker knows every field but not the pair key.
        let mut forger = ControlChannel::new(
            NodeId::A,
            &Keys::derive(&PairKey::from_bytes([0x43; 32])),
            11,
        );
        forger.peers[NodeId::B.index()].current = Some(22);
        forger.peers[NodeId::B.index()].sent = 1000;
        let forged = forger
            .seal(NodeId::B, &heartbeat_from(NodeId::A, u64::MAX, true))
            .unwrap();
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &forged),
            Err(DropReason::BadMac)
        );
        // Altering a genuine one (raising its epoch) breaks its MAC too.
        let mut genuine = a
            .seal(NodeId::B, &heartbeat_from(NodeId::A, 2, false))
            .unwrap();
        genuine[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &genuine),
            Err(DropReason::BadMac)
        );
        assert_eq!(b.counters().dropped(DropReason::BadMac), 2);
    }

    #[test]
    fn version_1_and_garbage_are_malformed() {
        let mut b = channel(NodeId::B, 22);
        let v1 = heartbeat_from(NodeId::A, u64::MAX, true);
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &v1),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), b"TD"),
            Err(DropReason::Malformed)
        );
        assert_eq!(b.counters().dropped(DropReason::Malformed), 2);
    }

    #[test]
    fn a_replay_within_the_boot_is_dropped() {
        let mut a = channel(NodeId::A, 11);
        let mut w = channel(NodeId::Witness, 33);
        associate(&mut a, &mut w);
        let reply = lease_reply_from(NodeId::Witness, 7);
        let (captured, verdict) = deliver(&mut w, &mut a, &reply);
        assert_eq!(verdict, Ok(reply));
        assert_eq!(
            a.open(FRONT, Some(NodeId::Witness), &captured),
            Err(DropReason::Replay)
        );
        // Later datagrams still pass; the capture never does again.
        let hb = heartbeat_from(NodeId::Witness, 2, false);
        assert!(deliver(&mut w, &mut a, &hb).1.is_ok());
        assert_eq!(
            a.open(FRONT, Some(NodeId::Witness), &captured),
            Err(DropReason::Replay)
        );
        // Also not through the other link (it names link 1).
        assert_eq!(
            a.open(LinkId(0), Some(NodeId::Witness), &captured),
            Err(DropReason::WrongSource)
        );
        assert_eq!(a.counters().dropped(DropReason::Replay), 2);
    }

    #[test]
    fn datagrams_reordered_across_links_are_accepted_once_each() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        associate(&mut a, &mut b);
        let first = a
            .seal(NodeId::B, &heartbeat_from(NodeId::A, 2, false))
            .unwrap();
        let second = a
            .seal(NodeId::B, &heartbeat_from(NodeId::A, 2, false))
            .unwrap();
        assert!(b.open(FRONT, Some(NodeId::A), &second).is_ok());
        assert!(b.open(FRONT, Some(NodeId::A), &first).is_ok());
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &first),
            Err(DropReason::Replay)
        );
    }

    #[test]
    fn a_replay_from_an_earlier_boot_of_the_receiver_is_dropped() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        associate(&mut a, &mut b);
        let (captured, verdict) = deliver(&mut a, &mut b, &heartbeat_from(NodeId::A, 9, true));
        assert!(verdict.is_ok());
        // b reboots: a new nonce; the old datagrams echo the old one.
        let mut b = channel(NodeId::B, 23);
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &captured),
            Err(DropReason::OldSession)
        );
        associate(&mut a, &mut b);
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &captured),
            Err(DropReason::OldSession)
        );
    }

    #[test]
    fn a_replay_from_an_earlier_boot_of_the_sender_is_dropped() {
        let mut w = channel(NodeId::Witness, 33);
        let mut a = channel(NodeId::A, 11);
        associate(&mut w, &mut a);
        let (captured, verdict) = deliver(&mut w, &mut a, &lease_reply_from(NodeId::Witness, 5));
        assert!(verdict.is_ok());
        // The witness restarts; a keeps its boot. The new session associates…
        let mut w = channel(NodeId::Witness, 34);
        associate(&mut w, &mut a);
        // …and the old session's datagram is still known for what it is.
        assert_eq!(
            a.open(FRONT, Some(NodeId::Witness), &captured),
            Err(DropReason::Replay)
        );
        // The witness's datagrams keep being accepted after the attempt.
        assert!(
            deliver(&mut w, &mut a, &heartbeat_from(NodeId::Witness, 2, false))
                .1
                .is_ok()
        );
    }

    #[test]
    fn an_unseen_datagram_of_an_old_session_cannot_lock_the_new_one_out() {
        let mut b = channel(NodeId::B, 22);
        let mut a = channel(NodeId::A, 11);
        associate(&mut a, &mut b);
        // A datagram of a's old session that b never received (withheld).
        let withheld = a
            .seal(NodeId::B, &heartbeat_from(NodeId::A, 2, false))
            .unwrap();
        let mut a = channel(NodeId::A, 12);
        associate(&mut a, &mut b);
        // Delivered late it is genuine and new to b: accepted once…
        assert!(b.open(FRONT, Some(NodeId::A), &withheld).is_ok());
        // …and a's current session goes on without interruption.
        assert!(
            deliver(&mut a, &mut b, &heartbeat_from(NodeId::A, 2, false))
                .1
                .is_ok()
        );
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &withheld),
            Err(DropReason::Replay)
        );
    }

    #[test]
    fn wrong_source_and_misdirected_are_dropped() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        let mut w = channel(NodeId::Witness, 33);
        associate(&mut a, &mut b);
        associate(&mut a, &mut w);
        let sealed = a
            .seal(NodeId::B, &heartbeat_from(NodeId::A, 2, false))
            .unwrap();
        // From an address that is not a's on this link (a tenant's).
        assert_eq!(b.open(FRONT, None, &sealed), Err(DropReason::WrongSource));
        // From the witness's address though it says a.
        assert_eq!(
            b.open(FRONT, Some(NodeId::Witness), &sealed),
            Err(DropReason::WrongSource)
        );
        // Bound to b: the witness does not take it.
        assert_eq!(
            w.open(FRONT, Some(NodeId::A), &sealed),
            Err(DropReason::Misdirected)
        );
        // Still fresh for b afterwards: the refusals marked nothing seen.
        assert!(b.open(FRONT, Some(NodeId::A), &sealed).is_ok());
        assert_eq!(b.counters().dropped(DropReason::WrongSource), 2);
        assert_eq!(w.counters().dropped(DropReason::Misdirected), 1);
    }

    #[test]
    fn connection_lists_share_the_channel() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        associate(&mut a, &mut b);
        let list = ConnectionList {
            sender: NodeId::A,
            boot: 1,
            sequence: 1,
            entries: alloc::vec![ConnectionEntry {
                local_address: [10, 0, 0, 1],
                local_port: 4420,
                host_port: 40000,
                host_address: [10, 0, 0, 7],
            }],
        }
        .emit();
        let (captured, verdict) = deliver(&mut a, &mut b, &list);
        assert_eq!(verdict, Ok(list));
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &captured),
            Err(DropReason::Replay)
        );
        let mut tampered = captured.clone();
        tampered[48 + 11] ^= 1;
        assert_eq!(
            b.open(FRONT, Some(NodeId::A), &tampered),
            Err(DropReason::BadMac)
        );
    }

    #[test]
    fn stale_datagrams_cannot_disturb_an_association() {
        let mut a = channel(NodeId::A, 11);
        let mut b = channel(NodeId::B, 22);
        // Captured from an earlier boot of a (echoing nothing b knows).
        let mut old_a = channel(NodeId::A, 10);
        let old = old_a
            .seal(NodeId::B, &heartbeat_from(NodeId::A, 2, false))
            .unwrap();
        associate(&mut a, &mut b);
        for _ in 0..5 {
            assert_eq!(
                b.open(FRONT, Some(NodeId::A), &old),
                Err(DropReason::OldSession)
            );
        }
        // b still echoes a's current session.
        assert!(
            deliver(&mut b, &mut a, &heartbeat_from(NodeId::B, 2, false))
                .1
                .is_ok()
        );
    }

    #[test]
    fn counters_print_every_reason_and_no_key() {
        let mut b = channel(NodeId::B, 22);
        let _ = b.open(FRONT, None, b"garbage");
        let text = alloc::format!("{}", b.counters());
        assert!(
            text.starts_with("control datagrams: accepted 0, dropped malformed 1"),
            "{text}"
        );
        for reason in DropReason::ALL {
            assert!(text.contains(reason.name()));
        }
        let shown = alloc::format!("{b:?}");
        assert!(
            shown.contains("<secret>") && !shown.contains("66, 66"),
            "{shown}"
        );
    }
}
