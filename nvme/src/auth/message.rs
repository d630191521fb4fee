//! DH-HMAC-CHAP messages (NVMe Base 2.0 §8.13.5.x; all multi-byte fields
//! little-endian). Host to controller (Authentication Send): Negotiate,
//! Reply, Success2, Failure2. Controller to host (Authentication Receive):
//! Challenge, Success1, Failure1. Parsing checks every length against the
//! bytes given and never panics.
//!
//! ```text
//! every message   0 AUTH_Type (00h common, 01h DH-HMAC-CHAP)  1 AUTH_Id  4..6 T_ID
//! Negotiate       6 SC_C  7 NAPD  8.. NAPD descriptors of 64 bytes:
//!                   0 AUTHID (01h)  2 HALEN  3 DHLEN  4.. hash IDs, 34.. DH group IDs
//! Challenge       6 HL  8 HashID  9 DHgID  10 DHVLEN(2)  12 SEQNUM(4)  16 C1[HL]  DH value[DHVLEN]
//! Reply           6 HL  8 CVALID  10 DHVLEN(2)  12 SEQNUM(4)  16 R1[HL]  C2[HL]  DH value[DHVLEN]
//! Success1        6 HL  8 RVALID  16 R2[HL]
//! Success2        (header only, 16 bytes)
//! Failure1/2      6 REASON CODE (01h)  7 REASON CODE EXPLANATION
//! ```

use alloc::vec;
use alloc::vec::Vec;

/// AUTH_Type values.
pub const TYPE_COMMON: u8 = 0x00;
pub const TYPE_DHCHAP: u8 = 0x01;
/// AUTH_Id values.
pub const ID_NEGOTIATE: u8 = 0x00;
pub const ID_CHALLENGE: u8 = 0x01;
pub const ID_REPLY: u8 = 0x02;
pub const ID_SUCCESS1: u8 = 0x03;
pub const ID_SUCCESS2: u8 = 0x04;
pub const ID_FAILURE2: u8 = 0xF0;
pub const ID_FAILURE1: u8 = 0xF1;
/// The DH-HMAC-CHAP protocol in a Negotiate descriptor (AUTHID).
pub const AUTHID_DHCHAP: u8 = 0x01;

/// Failure reason code: "authentication failure".
pub const REASON_FAILED: u8 = 0x01;

/// Reason code explanations (§8.13.5.x, Figure "Failure reason code explanations").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureReason {
    /// The response did not match: wrong secret.
    Failed = 0x01,
    NotUsable = 0x02,
    /// Secure channel concatenation asked for (not supported).
    ConcatMismatch = 0x03,
    /// No hash function in common.
    HashUnusable = 0x04,
    /// No DH group in common, or an invalid DH value.
    DhGroupUnusable = 0x05,
    /// A field of the message is wrong.
    IncorrectPayload = 0x06,
    /// A message out of order.
    IncorrectMessage = 0x07,
}

impl FailureReason {
    pub fn describe(self) -> &'static str {
        match self {
            FailureReason::Failed => "response mismatch (wrong secret)",
            FailureReason::NotUsable => "protocol not usable",
            FailureReason::ConcatMismatch => "secure channel concatenation not supported",
            FailureReason::HashUnusable => "no hash function in common",
            FailureReason::DhGroupUnusable => "no usable DH group or DH value",
            FailureReason::IncorrectPayload => "malformed message",
            FailureReason::IncorrectMessage => "message out of order",
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A message from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage<'a> {
    Negotiate {
        tid: u16,
        sc_c: u8,
        /// The DH-HMAC-CHAP descriptor's hash IDs and DH group IDs (None when
        /// the first descriptor is another protocol or there are not exactly one).
        hashes: &'a [u8],
        groups: &'a [u8],
        descriptors: u8,
        authid: u8,
    },
    Reply {
        tid: u16,
        hl: u8,
        cvalid: bool,
        seqnum: u32,
        response: &'a [u8],
        challenge: &'a [u8],
        dh_value: &'a [u8],
    },
    Success2 {
        tid: u16,
    },
    Failure2 {
        tid: u16,
        reason: u8,
        explanation: u8,
    },
}

impl<'a> HostMessage<'a> {
    /// Parses one Authentication Send payload; Err explains what is wrong.
    pub fn parse(b: &'a [u8]) -> Result<HostMessage<'a>, FailureReason> {
        use FailureReason::*;
        if b.len() < 8 {
            return Err(IncorrectPayload);
        }
        let tid = le16(b, 4);
        match (b[0], b[1]) {
            (TYPE_COMMON, ID_NEGOTIATE) => {
                let napd = b[7];
                if b.len() < 8 + 64 || napd == 0 || b.len() < 8 + 64 * napd as usize {
                    return Err(IncorrectPayload);
                }
                let d = &b[8..8 + 64];
                let (halen, dhlen) = (d[2] as usize, d[3] as usize);
                if halen > 30 || dhlen > 30 {
                    return Err(IncorrectPayload);
                }
                Ok(HostMessage::Negotiate {
                    tid,
                    sc_c: b[6],
                    hashes: &d[4..4 + halen],
                    groups: &d[34..34 + dhlen],
                    descriptors: napd,
                    authid: d[0],
                })
            }
            (TYPE_DHCHAP, ID_REPLY) => {
                if b.len() < 16 {
                    return Err(IncorrectPayload);
                }
                let hl = b[6] as usize;
                let dhvlen = le16(b, 10) as usize;
                if hl == 0 || b.len() < 16 + 2 * hl + dhvlen {
                    return Err(IncorrectPayload);
                }
                Ok(HostMessage::Reply {
                    tid,
                    hl: b[6],
                    cvalid: b[8] & 1 != 0,
                    seqnum: le32(b, 12),
                    response: &b[16..16 + hl],
                    challenge: &b[16 + hl..16 + 2 * hl],
                    dh_value: &b[16 + 2 * hl..16 + 2 * hl + dhvlen],
                })
            }
            (TYPE_DHCHAP, ID_SUCCESS2) => Ok(HostMessage::Success2 { tid }),
            (TYPE_COMMON, ID_FAILURE2) => Ok(HostMessage::Failure2 {
                tid,
                reason: b[6],
                explanation: b[7],
            }),
            _ => Err(IncorrectMessage),
        }
    }
}

fn header(auth_type: u8, id: u8, tid: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0] = auth_type;
    m[1] = id;
    m[4..6].copy_from_slice(&tid.to_le_bytes());
    m
}

/// DH-HMAC-CHAP_Challenge.
pub fn challenge(
    tid: u16,
    hash_id: u8,
    dh_group: u8,
    seqnum: u32,
    c1: &[u8],
    dh_value: &[u8],
) -> Vec<u8> {
    let mut m = header(
        TYPE_DHCHAP,
        ID_CHALLENGE,
        tid,
        16 + c1.len() + dh_value.len(),
    );
    m[6] = c1.len() as u8;
    m[8] = hash_id;
    m[9] = dh_group;
    m[10..12].copy_from_slice(&(dh_value.len() as u16).to_le_bytes());
    m[12..16].copy_from_slice(&seqnum.to_le_bytes());
    m[16..16 + c1.len()].copy_from_slice(c1);
    m[16 + c1.len()..].copy_from_slice(dh_value);
    m
}

/// DH-HMAC-CHAP_Success1, with the controller's response when the host asked.
pub fn success1(tid: u16, hl: usize, response: Option<&[u8]>) -> Vec<u8> {
    let mut m = header(TYPE_DHCHAP, ID_SUCCESS1, tid, 16 + hl);
    m[6] = hl as u8;
    if let Some(r) = response {
        m[8] = 1;
        m[16..16 + r.len()].copy_from_slice(r);
    }
    m
}

/// AUTH_Failure1.
pub fn failure1(tid: u16, reason: FailureReason) -> Vec<u8> {
    let mut m = header(TYPE_COMMON, ID_FAILURE1, tid, 8);
    m[6] = REASON_FAILED;
    m[7] = reason as u8;
    m
}

#[cfg(any(test, feature = "host"))]
pub mod build {
    //! Host-side builders, for tests.
    use super::*;

    pub fn negotiate(tid: u16, hashes: &[u8], groups: &[u8]) -> Vec<u8> {
        let mut m = header(TYPE_COMMON, ID_NEGOTIATE, tid, 8 + 64);
        m[7] = 1;
        m[8] = AUTHID_DHCHAP;
        m[10] = hashes.len() as u8;
        m[11] = groups.len() as u8;
        m[12..12 + hashes.len()].copy_from_slice(hashes);
        m[42..42 + groups.len()].copy_from_slice(groups);
        m
    }

    pub fn reply(tid: u16, seqnum: u32, r1: &[u8], c2: Option<&[u8]>, dh: &[u8]) -> Vec<u8> {
        let hl = r1.len();
        let mut m = header(TYPE_DHCHAP, ID_REPLY, tid, 16 + 2 * hl + dh.len());
        m[6] = hl as u8;
        m[8] = c2.is_some() as u8;
        m[10..12].copy_from_slice(&(dh.len() as u16).to_le_bytes());
        m[12..16].copy_from_slice(&seqnum.to_le_bytes());
        m[16..16 + hl].copy_from_slice(r1);
        if let Some(c) = c2 {
            m[16 + hl..16 + 2 * hl].copy_from_slice(c);
        }
        m[16 + 2 * hl..].copy_from_slice(dh);
        m
    }

    pub fn success2(tid: u16) -> Vec<u8> {
        header(TYPE_DHCHAP, ID_SUCCESS2, tid, 16)
    }

    pub fn failure2(tid: u16, explanation: u8) -> Vec<u8> {
        let mut m = header(TYPE_COMMON, ID_FAILURE2, tid, 8);
        m[6] = REASON_FAILED;
        m[7] = explanation;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_round_trips_and_bad_lengths_are_refused() {
        let m = build::negotiate(7, &[1, 2, 3], &[0, 1, 2, 3, 4, 5]);
        match HostMessage::parse(&m).unwrap() {
            HostMessage::Negotiate {
                tid,
                hashes,
                groups,
                descriptors,
                authid,
                sc_c,
            } => {
                assert_eq!((tid, descriptors, authid, sc_c), (7, 1, AUTHID_DHCHAP, 0));
                assert_eq!(hashes, &[1, 2, 3]);
                assert_eq!(groups, &[0, 1, 2, 3, 4, 5]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            HostMessage::parse(&m[..71]),
            Err(FailureReason::IncorrectPayload)
        );
        let mut long_list = m.clone();
        long_list[10] = 31;
        assert_eq!(
            HostMessage::parse(&long_list),
            Err(FailureReason::IncorrectPayload)
        );
    }

    #[test]
    fn reply_fields_are_where_the_spec_puts_them() {
        let r1 = [0xAA; 32];
        let c2 = [0xBB; 32];
        let m = build::reply(9, 0x01020304, &r1, Some(&c2), &[0xCC; 256]);
        assert_eq!(m.len(), 16 + 64 + 256);
        match HostMessage::parse(&m).unwrap() {
            HostMessage::Reply {
                tid,
                hl,
                cvalid,
                seqnum,
                response,
                challenge,
                dh_value,
            } => {
                assert_eq!((tid, hl, cvalid, seqnum), (9, 32, true, 0x01020304));
                assert_eq!(response, &r1);
                assert_eq!(challenge, &c2);
                assert_eq!(dh_value.len(), 256);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            HostMessage::parse(&m[..m.len() - 1]),
            Err(FailureReason::IncorrectPayload)
        );
    }

    #[test]
    fn controller_messages_have_the_spec_layout() {
        let c = challenge(3, 1, 0, 0x11223344, &[0x55; 32], &[]);
        assert_eq!(
            &c[..16],
            &[1, 1, 0, 0, 3, 0, 32, 0, 1, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(c.len(), 48);
        let s = success1(3, 48, Some(&[9; 48]));
        assert_eq!((s[0], s[1], s[6], s[8], s.len()), (1, 3, 48, 1, 64));
        let f = failure1(3, FailureReason::Failed);
        assert_eq!(f, [0, 0xF1, 0, 0, 3, 0, 1, 1]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..400 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 7) as u8
                })
                .collect();
            let _ = HostMessage::parse(&buf);
        }
    }
}
