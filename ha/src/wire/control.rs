//! Control datagrams: heartbeat, lease request/reply, vote request/reply,
//! handover, switchover request. Sent as UDP datagrams on every link.
//!
//! Header (24 bytes, big-endian):
//! ```text
//!  0 magic    u32  0x54444841 ("TDHA")
//!  4 version  u8   1
//!  5 kind     u8
//!  6 sender   u8   0 = a, 1 = b, 2 = witness
//!  7 link     u8   index of the link the sender used
//!  8 epoch    u64  the sender's current epoch (its fencing token)
//! 16 length   u16  payload length
//! 18 reserved u16  0
//! 20 crc32c   u32  CRC-32C of header and payload with this field zero
//! 24 payload
//! ```

use alloc::vec::Vec;

use super::{CRC32C, RECORD_LEN, Reader, Writer};
use crate::Error;
use crate::types::{
    DataState, EpochRecord, LinkId, NodeId, Role, opt_node_from_u8, opt_node_to_u8,
};

pub const MAGIC: u32 = 0x5444_4841;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// Largest payload any version-1 datagram has; longer ones are refused.
pub const MAX_PAYLOAD: usize = 64;

pub mod kind {
    pub const HEARTBEAT: u8 = 1;
    pub const LEASE_REQUEST: u8 = 2;
    pub const LEASE_REPLY: u8 = 3;
    pub const VOTE_REQUEST: u8 = 4;
    pub const VOTE_REPLY: u8 = 5;
    pub const HANDOVER: u8 = 6;
    pub const SWITCHOVER_REQUEST: u8 = 7;
}

/// Zero-copy view of a control datagram.
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (for emitting into a buffer known good).
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wraps untrusted bytes: checks length, magic, version, declared payload
    /// length and checksum.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Packet { buffer };
        p.check()?;
        Ok(p)
    }
    fn check(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.magic() != MAGIC {
            return Err(Error::BadMagic);
        }
        if self.version() != VERSION {
            return Err(Error::UnsupportedVersion(self.version() as u16));
        }
        let len = self.payload_len() as usize;
        if len > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                length: len as u64,
                max: MAX_PAYLOAD as u64,
            });
        }
        if b.len() < HEADER_LEN + len {
            return Err(Error::Truncated);
        }
        if self.checksum() != compute_crc(&b[..HEADER_LEN + len]) {
            return Err(Error::BadChecksum);
        }
        Ok(())
    }
    fn field(&self) -> Reader<'_> {
        Reader::new(self.buffer.as_ref())
    }
    pub fn magic(&self) -> u32 {
        self.field().u32()
    }
    pub fn version(&self) -> u8 {
        let mut r = self.field();
        r.skip(4);
        r.u8()
    }
    pub fn kind(&self) -> u8 {
        let mut r = self.field();
        r.skip(5);
        r.u8()
    }
    pub fn sender(&self) -> u8 {
        let mut r = self.field();
        r.skip(6);
        r.u8()
    }
    pub fn link(&self) -> u8 {
        let mut r = self.field();
        r.skip(7);
        r.u8()
    }
    pub fn epoch(&self) -> u64 {
        let mut r = self.field();
        r.skip(8);
        r.u64()
    }
    pub fn payload_len(&self) -> u16 {
        let mut r = self.field();
        r.skip(16);
        r.u16()
    }
    pub fn checksum(&self) -> u32 {
        let mut r = self.field();
        r.skip(20);
        r.u32()
    }
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + self.payload_len() as usize).min(b.len());
        b.get(HEADER_LEN..end).unwrap_or(&[])
    }
}

fn compute_crc(datagram: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(datagram.get(..20).unwrap_or(&[]));
    d.update(&[0u8; 4]);
    d.update(datagram.get(24..).unwrap_or(&[]));
    d.finalize()
}

/// Why a lease or vote was refused (carried in replies, shown in status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    None = 0,
    /// The request's epoch is lower than the responder's.
    StaleEpoch = 1,
    /// The responder already voted for another candidate in this epoch.
    AlreadyVoted = 2,
    /// The candidate's data is not UpToDate, or it is recorded Outdated.
    NotEligible = 3,
    /// The responder granted a lease to the current primary that may still
    /// be running.
    LeaseOutstanding = 4,
    /// The responder (re)started and has not yet heard the other data node,
    /// so it cannot tell what that node recorded.
    PeerStateUnknown = 5,
    /// The requester is not the primary of the responder's latest record.
    NotPrimary = 6,
    /// The candidate has not seen the latest committed epoch record.
    StaleRecord = 7,
    /// The responder is primary itself and does not give way.
    ResponderIsPrimary = 8,
}

impl Refusal {
    pub fn from_u8(v: u8) -> Option<Refusal> {
        Some(match v {
            0 => Refusal::None,
            1 => Refusal::StaleEpoch,
            2 => Refusal::AlreadyVoted,
            3 => Refusal::NotEligible,
            4 => Refusal::LeaseOutstanding,
            5 => Refusal::PeerStateUnknown,
            6 => Refusal::NotPrimary,
            7 => Refusal::StaleRecord,
            8 => Refusal::ResponderIsPrimary,
            _ => return None,
        })
    }
}

/// Why a candidate stands for election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionReason {
    /// No primary yet (fresh pair, or both were fenced).
    NoPrimary = 0,
    /// The primary was silent on every link for the failure timeout.
    Failover = 1,
    /// Planned switchover: the primary drained and handed over.
    Switchover = 2,
    /// The primary records its unreachable peer as Outdated.
    OutdatePeer = 3,
    /// The primary records its resynchronised peer as UpToDate again.
    PeerRecovered = 4,
}

impl ElectionReason {
    pub fn from_u8(v: u8) -> Option<ElectionReason> {
        Some(match v {
            0 => ElectionReason::NoPrimary,
            1 => ElectionReason::Failover,
            2 => ElectionReason::Switchover,
            3 => ElectionReason::OutdatePeer,
            4 => ElectionReason::PeerRecovered,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            ElectionReason::NoPrimary => "no-primary",
            ElectionReason::Failover => "failover",
            ElectionReason::Switchover => "switchover",
            ElectionReason::OutdatePeer => "peer-outdated",
            ElectionReason::PeerRecovered => "peer-recovered",
        }
    }
}

/// Heartbeat flag bits.
pub mod flags {
    /// The sender is fenced by the operator and will not stand for election.
    pub const ADMIN_FENCED: u8 = 1 << 0;
    /// The sender is primary and currently holds a lease.
    pub const SERVING: u8 = 1 << 1;
}

/// Sent on every link every heartbeat interval by every member. Carries the
/// sender's persisted state so that a restarted witness can relearn it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub role: Role,
    pub data_state: DataState,
    pub peer_state: DataState,
    pub flags: u8,
    /// Whom the sender voted for in its current epoch (header epoch).
    pub voted_for: Option<NodeId>,
    /// The node the voted-for proposal records as Outdated.
    pub vote_outdated: Option<NodeId>,
    /// The latest committed record the sender knows.
    pub record: EpochRecord,
    /// A value the sender chose at boot (differs on every start).
    pub incarnation: u64,
    /// The receiver's incarnation as last heard by the sender (0 if none):
    /// proves the heartbeat was sent after the receiver started.
    pub echo: u64,
    /// The sender's host path (data nodes that judge it; `None` from the
    /// witness, from a node that does not, and from a sender that predates
    /// the field).
    pub host_path: Option<HostPathReport>,
}

/// Version of the host-path field appended to the heartbeat.
pub const HOST_PATH_VERSION: u8 = 1;
/// Heartbeat payload without the host-path field, and with it.
pub const HEARTBEAT_BASE_LEN: usize = 40;
pub const HEARTBEAT_LEN: usize = HEARTBEAT_BASE_LEN + 8;

/// Host-path field flag bits.
pub mod host_path_flags {
    /// The sender's verdict: it can serve hosts.
    pub const CAN_SERVE: u8 = 1 << 0;
    /// Its front-end NIC's link is up.
    pub const NIC_UP: u8 = 1 << 1;
    /// It hears its peer on a front-end link.
    pub const HEARS_PEER: u8 = 1 << 2;
    /// It hears the witness on a front-end link.
    pub const HEARS_WITNESS: u8 = 1 << 3;
}

/// A data node's view of its own front-end (`docs/ha-protocol.md` §17):
/// the verdict, with the signals it was drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPathReport {
    pub can_serve: bool,
    pub nic_up: bool,
    pub hears_peer: bool,
    pub hears_witness: bool,
}

impl HostPathReport {
    fn flags(&self) -> u8 {
        use host_path_flags::*;
        let mut f = 0;
        for (set, bit) in [
            (self.can_serve, CAN_SERVE),
            (self.nic_up, NIC_UP),
            (self.hears_peer, HEARS_PEER),
            (self.hears_witness, HEARS_WITNESS),
        ] {
            if set {
                f |= bit;
            }
        }
        f
    }

    fn from_flags(f: u8) -> HostPathReport {
        use host_path_flags::*;
        HostPathReport {
            can_serve: f & CAN_SERVE != 0,
            nic_up: f & NIC_UP != 0,
            hears_peer: f & HEARS_PEER != 0,
            hears_witness: f & HEARS_WITNESS != 0,
        }
    }
}

/// The message carried by a control datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Heartbeat(Heartbeat),
    /// A primary asks for (renewal of) its lease; `round` numbers the request
    /// so that a reply confirms a point in time after the request was sent.
    LeaseRequest {
        round: u64,
        record: EpochRecord,
    },
    LeaseReply {
        round: u64,
        granted: bool,
        refusal: Refusal,
    },
    /// The sender asks to become primary of epoch `header.epoch`, recording
    /// `outdated` as Outdated. `record` is the candidate's latest record.
    VoteRequest {
        outdated: Option<NodeId>,
        data_state: DataState,
        reason: ElectionReason,
        record: EpochRecord,
    },
    VoteReply {
        granted: bool,
        refusal: Refusal,
        record: EpochRecord,
    },
    /// The primary has drained its I/O and asks its peer to take over.
    Handover {
        record: EpochRecord,
    },
    /// A secondary asks the primary for a planned switchover (console `promote`).
    SwitchoverRequest,
}

/// A decoded control datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub sender: NodeId,
    pub link: LinkId,
    pub epoch: u64,
    pub message: Message,
}

impl Datagram {
    /// Decodes untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<Datagram, Error> {
        let p = Packet::new_checked(bytes)?;
        let sender = NodeId::from_u8(p.sender()).ok_or(Error::InvalidField("sender"))?;
        let link = LinkId(p.link());
        let payload = p.payload();
        let need = |n: usize| {
            if payload.len() < n {
                Err(Error::Truncated)
            } else {
                Ok(())
            }
        };
        let mut r = Reader::new(payload);
        let message = match p.kind() {
            kind::HEARTBEAT => {
                need(8 + RECORD_LEN + 16)?;
                let role = Role::from_u8(r.u8()).ok_or(Error::InvalidField("heartbeat.role"))?;
                let data_state = DataState::from_u8(r.u8())
                    .ok_or(Error::InvalidField("heartbeat.data_state"))?;
                let peer_state = DataState::from_u8(r.u8())
                    .ok_or(Error::InvalidField("heartbeat.peer_state"))?;
                let flags = r.u8();
                let voted_for = opt_node_from_u8(r.u8())
                    .map_err(|_| Error::InvalidField("heartbeat.voted_for"))?;
                let vote_outdated = opt_node_from_u8(r.u8())
                    .map_err(|_| Error::InvalidField("heartbeat.vote_outdated"))?;
                r.skip(2);
                let record = r.record()?;
                let incarnation = r.u64();
                let echo = r.u64();
                // The host-path field: absent from older senders; a later
                // version of it is not understood and taken as absent.
                let host_path = if payload.len() >= HEARTBEAT_LEN {
                    let version = r.u8();
                    let f = r.u8();
                    (version == HOST_PATH_VERSION).then(|| HostPathReport::from_flags(f))
                } else {
                    None
                };
                Message::Heartbeat(Heartbeat {
                    role,
                    data_state,
                    peer_state,
                    flags,
                    voted_for,
                    vote_outdated,
                    record,
                    incarnation,
                    echo,
                    host_path,
                })
            }
            kind::LEASE_REQUEST => {
                need(8 + RECORD_LEN)?;
                let round = r.u64();
                Message::LeaseRequest {
                    round,
                    record: r.record()?,
                }
            }
            kind::LEASE_REPLY => {
                need(16)?;
                let round = r.u64();
                let granted = r.u8() != 0;
                let refusal =
                    Refusal::from_u8(r.u8()).ok_or(Error::InvalidField("lease_reply.refusal"))?;
                Message::LeaseReply {
                    round,
                    granted,
                    refusal,
                }
            }
            kind::VOTE_REQUEST => {
                need(8 + RECORD_LEN)?;
                let outdated = opt_node_from_u8(r.u8())
                    .map_err(|_| Error::InvalidField("vote_request.outdated"))?;
                let data_state = DataState::from_u8(r.u8())
                    .ok_or(Error::InvalidField("vote_request.data_state"))?;
                let reason = ElectionReason::from_u8(r.u8())
                    .ok_or(Error::InvalidField("vote_request.reason"))?;
                r.skip(5);
                Message::VoteRequest {
                    outdated,
                    data_state,
                    reason,
                    record: r.record()?,
                }
            }
            kind::VOTE_REPLY => {
                need(8 + RECORD_LEN)?;
                let granted = r.u8() != 0;
                let refusal =
                    Refusal::from_u8(r.u8()).ok_or(Error::InvalidField("vote_reply.refusal"))?;
                r.skip(6);
                Message::VoteReply {
                    granted,
                    refusal,
                    record: r.record()?,
                }
            }
            kind::HANDOVER => {
                need(RECORD_LEN)?;
                Message::Handover {
                    record: r.record()?,
                }
            }
            kind::SWITCHOVER_REQUEST => Message::SwitchoverRequest,
            k => return Err(Error::UnknownKind(k)),
        };
        Ok(Datagram {
            sender,
            link,
            epoch: p.epoch(),
            message,
        })
    }

    /// Encodes the datagram, checksum included.
    pub fn emit(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(MAX_PAYLOAD);
        let mut w = Writer(&mut payload);
        let kind = match &self.message {
            Message::Heartbeat(h) => {
                w.u8(h.role as u8)
                    .u8(h.data_state as u8)
                    .u8(h.peer_state as u8)
                    .u8(h.flags)
                    .u8(opt_node_to_u8(h.voted_for))
                    .u8(opt_node_to_u8(h.vote_outdated))
                    .zeros(2)
                    .record(&h.record)
                    .u64(h.incarnation)
                    .u64(h.echo);
                match h.host_path {
                    Some(p) => w.u8(HOST_PATH_VERSION).u8(p.flags()).zeros(6),
                    None => w.zeros(8),
                };
                kind::HEARTBEAT
            }
            Message::LeaseRequest { round, record } => {
                w.u64(*round).record(record);
                kind::LEASE_REQUEST
            }
            Message::LeaseReply {
                round,
                granted,
                refusal,
            } => {
                w.u64(*round).u8(*granted as u8).u8(*refusal as u8).zeros(6);
                kind::LEASE_REPLY
            }
            Message::VoteRequest {
                outdated,
                data_state,
                reason,
                record,
            } => {
                w.u8(opt_node_to_u8(*outdated))
                    .u8(*data_state as u8)
                    .u8(*reason as u8)
                    .zeros(5)
                    .record(record);
                kind::VOTE_REQUEST
            }
            Message::VoteReply {
                granted,
                refusal,
                record,
            } => {
                w.u8(*granted as u8)
                    .u8(*refusal as u8)
                    .zeros(6)
                    .record(record);
                kind::VOTE_REPLY
            }
            Message::Handover { record } => {
                w.record(record);
                kind::HANDOVER
            }
            Message::SwitchoverRequest => kind::SWITCHOVER_REQUEST,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        Writer(&mut out)
            .u32(MAGIC)
            .u8(VERSION)
            .u8(kind)
            .u8(self.sender.to_u8())
            .u8(self.link.0)
            .u64(self.epoch)
            .u16(payload.len() as u16)
            .u16(0)
            .u32(0)
            .bytes(&payload);
        let crc = compute_crc(&out);
        if let Some(slot) = out.get_mut(20..24) {
            slot.copy_from_slice(&crc.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Datagram> {
        let rec = EpochRecord {
            epoch: 7,
            primary: Some(NodeId::A),
            outdated: Some(NodeId::B),
        };
        let msgs = [
            Message::Heartbeat(Heartbeat {
                role: Role::Primary,
                data_state: DataState::UpToDate,
                peer_state: DataState::Outdated,
                flags: flags::SERVING,
                voted_for: Some(NodeId::A),
                vote_outdated: None,
                record: rec,
                incarnation: 0xdead_beef,
                echo: 42,
                host_path: Some(HostPathReport {
                    can_serve: false,
                    nic_up: true,
                    hears_peer: false,
                    hears_witness: true,
                }),
            }),
            Message::Heartbeat(Heartbeat {
                role: Role::Witness,
                data_state: DataState::UpToDate,
                peer_state: DataState::UpToDate,
                flags: 0,
                voted_for: None,
                vote_outdated: None,
                record: rec,
                incarnation: 1,
                echo: 0,
                host_path: None,
            }),
            Message::LeaseRequest {
                round: 99,
                record: rec,
            },
            Message::LeaseReply {
                round: 99,
                granted: true,
                refusal: Refusal::None,
            },
            Message::LeaseReply {
                round: 3,
                granted: false,
                refusal: Refusal::NotPrimary,
            },
            Message::VoteRequest {
                outdated: Some(NodeId::B),
                data_state: DataState::UpToDate,
                reason: ElectionReason::OutdatePeer,
                record: rec,
            },
            Message::VoteReply {
                granted: false,
                refusal: Refusal::LeaseOutstanding,
                record: EpochRecord::INITIAL,
            },
            Message::Handover { record: rec },
            Message::SwitchoverRequest,
        ];
        msgs.iter()
            .enumerate()
            .map(|(i, m)| Datagram {
                sender: NodeId::ALL[i % 3],
                link: LinkId((i % 2) as u8),
                epoch: 1000 + i as u64,
                message: *m,
            })
            .collect()
    }

    #[test]
    fn every_message_round_trips() {
        for d in samples() {
            let bytes = d.emit();
            assert_eq!(Datagram::parse(&bytes), Ok(d), "{d:?}");
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected_without_panic() {
        for d in samples() {
            let bytes = d.emit();
            for n in 0..bytes.len() {
                assert!(Datagram::parse(&bytes[..n]).is_err());
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    assert!(Datagram::parse(&b).is_err(), "flip {i}:{bit} accepted");
                }
            }
        }
    }

    #[test]
    fn specific_rejections() {
        let d = samples()[0];
        let mut b = d.emit();
        b[4] = 2;
        assert_eq!(Datagram::parse(&b), Err(Error::UnsupportedVersion(2)));
        let mut b = d.emit();
        b[0] = 0;
        assert_eq!(Datagram::parse(&b), Err(Error::BadMagic));
        // A valid checksum over an unknown kind or sender is still refused.
        for (offset, value, err) in [
            (5usize, 42u8, Error::UnknownKind(42)),
            (6, 9, Error::InvalidField("sender")),
            (24, 9, Error::InvalidField("heartbeat.role")),
        ] {
            let mut b = d.emit();
            b[offset] = value;
            let crc = compute_crc(&b);
            b[20..24].copy_from_slice(&crc.to_be_bytes());
            assert_eq!(Datagram::parse(&b), Err(err));
        }
        // Oversized declared payload.
        let mut b = d.emit();
        b[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            Datagram::parse(&b),
            Err(Error::TooLarge {
                length: 1000,
                max: MAX_PAYLOAD as u64
            })
        );
    }

    #[test]
    fn a_heartbeat_without_the_host_path_field_or_with_a_later_version_of_it_has_none() {
        let Message::Heartbeat(hb) = samples()[0].message else {
            unreachable!()
        };
        let d = Datagram {
            sender: NodeId::A,
            link: LinkId(1),
            epoch: 3,
            message: Message::Heartbeat(hb),
        };
        let full = d.emit();
        assert_eq!(full.len(), HEADER_LEN + HEARTBEAT_LEN);
        // An older sender's 40-byte heartbeat.
        let mut old = full[..HEADER_LEN + HEARTBEAT_BASE_LEN].to_vec();
        old[16..18].copy_from_slice(&(HEARTBEAT_BASE_LEN as u16).to_be_bytes());
        let crc = compute_crc(&old);
        old[20..24].copy_from_slice(&crc.to_be_bytes());
        let Ok(Datagram {
            message: Message::Heartbeat(parsed),
            ..
        }) = Datagram::parse(&old)
        else {
            panic!()
        };
        assert_eq!(
            parsed,
            Heartbeat {
                host_path: None,
                ..hb
            }
        );
        // A later version of the field.
        let mut later = full.clone();
        later[HEADER_LEN + HEARTBEAT_BASE_LEN] = HOST_PATH_VERSION + 1;
        let crc = compute_crc(&later);
        later[20..24].copy_from_slice(&crc.to_be_bytes());
        let Ok(Datagram {
            message: Message::Heartbeat(parsed),
            ..
        }) = Datagram::parse(&later)
        else {
            panic!()
        };
        assert_eq!(parsed.host_path, None);
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..200 {
            let mut b = alloc::vec![0u8; len];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            if len >= 4 {
                b[..4].copy_from_slice(&MAGIC.to_be_bytes());
            }
            let _ = Datagram::parse(&b);
        }
    }
}
