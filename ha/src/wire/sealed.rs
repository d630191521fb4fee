//! Version 2 of the control datagram and of the connection list: the
//! version-1 message with an authentication block and a MAC
//! (`docs/ha-protocol.md` §3a). Only version 2 is sent and accepted on the
//! wire; the state machines keep speaking the version-1 layout among
//! themselves ([`seal`] turns one into the other after checking it, and
//! [`Sealed::to_plain`] turns a verified datagram back).
//!
//! Layout (big-endian), both kinds:
//! ```text
//!  0 magic     u32  0x54444841 ("TDHA", control) or 0x5444434E ("TDCN", list)
//!  4 version   u8   2
//!  5 ..16           as in version 1 (control: kind, sender, link, epoch;
//!                   list: sender, count, boot, sequence)
//! 16 length    u16  control: payload length (at most 64); list: 0
//! 18 receiver  u8   node code of the member it is for
//! 19 reserved  u8   0
//! 20 reserved  u32  0
//! 24 nonce     u64  the sender's session nonce (random per boot, non-zero)
//! 32 echo      u64  the receiver's session nonce as last heard, 0 if none
//! 40 seq       u64  numbers the sender's datagrams to this receiver in this
//!                   session, from 1
//! 48 body           control: the payload; list: 12 × count bytes of entries
//! 48+n mac     [32] keyed BLAKE3 (control key) of bytes 0 .. 48+n
//! ```
//! The datagram is exactly `80 + n` bytes.

use alloc::vec::Vec;

use super::{CRC32C, Reader, Writer, connections, control};
use crate::Error;
use crate::auth::{Key, MAC_LEN};
use crate::types::NodeId;

pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 48;
/// Bytes a version-2 datagram has beyond its body.
pub const OVERHEAD: usize = HEADER_LEN + MAC_LEN;
/// Longest version-2 datagram (a full connection list).
pub const MAX_LEN: usize = OVERHEAD + connections::MAX_ENTRIES * connections::ENTRY_LEN;

/// Which message family a datagram belongs to (told by its magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Control,
    Connections,
}

/// The authentication block of a version-2 datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFields {
    pub receiver: NodeId,
    pub nonce: u64,
    pub echo: u64,
    pub seq: u64,
}

fn content_of(bytes: &[u8]) -> Result<Content, Error> {
    match Reader::new(bytes).u32() {
        control::MAGIC => Ok(Content::Control),
        connections::MAGIC => Ok(Content::Connections),
        _ => Err(Error::BadMagic),
    }
}

/// Turns a version-1 control datagram or connection list (as the state
/// machines emit it) into version 2 for `auth.receiver`. Refuses bytes that
/// are not a valid version-1 message.
pub fn seal(plain: &[u8], auth: &AuthFields, key: &Key) -> Result<Vec<u8>, Error> {
    let content = content_of(plain)?;
    let length_field = match content {
        Content::Control => {
            control::Datagram::parse(plain)?;
            let declared = Reader::new(plain.get(16..18).unwrap_or(&[])).u16();
            // Extra bytes after the declared length are not part of it.
            if plain.len() > control::HEADER_LEN + declared as usize {
                return Err(Error::InvalidField("length"));
            }
            declared
        }
        Content::Connections => {
            connections::ConnectionList::parse(plain)?;
            0
        }
    };
    let body = plain.get(24..).unwrap_or(&[]);
    let mut out = Vec::with_capacity(OVERHEAD + body.len());
    out.extend_from_slice(&plain[..16]);
    out[4] = VERSION;
    Writer(&mut out)
        .u16(length_field)
        .u8(auth.receiver.to_u8())
        .u8(0)
        .u32(0)
        .u64(auth.nonce)
        .u64(auth.echo)
        .u64(auth.seq)
        .bytes(body);
    let mac = key.mac(&[&out]);
    out.extend_from_slice(&mac);
    Ok(out)
}

/// A version-2 datagram whose structure was checked (its MAC not yet).
#[derive(Debug)]
pub struct Sealed<'a> {
    pub content: Content,
    /// The sender's node code (checked to be a member).
    pub sender: NodeId,
    /// The link the sender says it used (control datagrams only).
    pub link: Option<u8>,
    pub auth: AuthFields,
    bytes: &'a [u8],
}

impl<'a> Sealed<'a> {
    /// Checks the structure of untrusted bytes: magic, version, lengths,
    /// reserved fields, node codes. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Sealed<'a>, Error> {
        if bytes.len() < 5 {
            return Err(Error::Truncated);
        }
        let content = content_of(bytes)?;
        let version = bytes[4];
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version as u16));
        }
        if bytes.len() < OVERHEAD {
            return Err(Error::Truncated);
        }
        let mut r = Reader::new(bytes);
        r.skip(5);
        let (sender, link, body_len) = match content {
            Content::Control => {
                r.skip(1);
                let sender = r.u8();
                let link = r.u8();
                r.skip(8);
                let length = r.u16() as usize;
                if length > control::MAX_PAYLOAD {
                    return Err(Error::TooLarge {
                        length: length as u64,
                        max: control::MAX_PAYLOAD as u64,
                    });
                }
                (sender, Some(link), length)
            }
            Content::Connections => {
                let sender = r.u8();
                let count = r.u16() as usize;
                r.skip(8);
                if r.u16() != 0 {
                    return Err(Error::InvalidField("reserved"));
                }
                if count > connections::MAX_ENTRIES {
                    return Err(Error::TooLarge {
                        length: count as u64,
                        max: connections::MAX_ENTRIES as u64,
                    });
                }
                (sender, None, count * connections::ENTRY_LEN)
            }
        };
        if bytes.len() < OVERHEAD + body_len {
            return Err(Error::Truncated);
        }
        if bytes.len() > OVERHEAD + body_len {
            return Err(Error::InvalidField("length"));
        }
        let receiver = r.u8();
        if r.u8() != 0 || r.u32() != 0 {
            return Err(Error::InvalidField("reserved"));
        }
        let nonce = r.u64();
        let echo = r.u64();
        let seq = r.u64();
        let sender = NodeId::from_u8(sender).ok_or(Error::InvalidField("sender"))?;
        if content == Content::Connections && !sender.is_data_node() {
            return Err(Error::InvalidField("sender"));
        }
        let receiver = NodeId::from_u8(receiver).ok_or(Error::InvalidField("receiver"))?;
        if nonce == 0 {
            return Err(Error::InvalidField("nonce"));
        }
        Ok(Sealed {
            content,
            sender,
            link,
            auth: AuthFields {
                receiver,
                nonce,
                echo,
                seq,
            },
            bytes,
        })
    }

    /// Whether the MAC is right under `key`.
    pub fn verify(&self, key: &Key) -> bool {
        let signed = self.bytes.len() - MAC_LEN;
        key.verify(&[&self.bytes[..signed]], &self.bytes[signed..])
    }

    /// The version-1 message it carries (for the state machines, which check
    /// its fields as they always did).
    pub fn to_plain(&self) -> Vec<u8> {
        let body = &self.bytes[HEADER_LEN..self.bytes.len() - MAC_LEN];
        let mut out = Vec::with_capacity(24 + body.len());
        out.extend_from_slice(&self.bytes[..16]);
        out[4] = 1;
        match self.content {
            Content::Control => out.extend_from_slice(&self.bytes[16..18]),
            Content::Connections => out.extend_from_slice(&[0, 0]),
        }
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(body);
        // Both version-1 formats: CRC-32C of everything, CRC field zero.
        let mut digest = CRC32C.digest();
        digest.update(&out);
        let crc = digest.finalize();
        out[20..24].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Keys, PairKey};
    use crate::types::{DataState, EpochRecord, LinkId, Role};
    use crate::wire::connections::{ConnectionEntry, ConnectionList};
    use crate::wire::control::{Datagram, Heartbeat, Message};

    fn key() -> Key {
        Keys::derive(&PairKey::from_bytes([3; 32])).control
    }

    fn auth() -> AuthFields {
        AuthFields {
            receiver: NodeId::B,
            nonce: 0x1111,
            echo: 0x2222,
            seq: 9,
        }
    }

    pub(crate) fn heartbeat() -> Vec<u8> {
        Datagram {
            sender: NodeId::A,
            link: LinkId(1),
            epoch: 12,
            message: Message::Heartbeat(Heartbeat {
                role: Role::Primary,
                data_state: DataState::UpToDate,
                peer_state: DataState::UpToDate,
                flags: 2,
                voted_for: Some(NodeId::A),
                vote_outdated: None,
                record: EpochRecord {
                    epoch: 12,
                    primary: Some(NodeId::A),
                    outdated: None,
                },
                incarnation: 5,
                echo: 6,
                host_path: None,
            }),
        }
        .emit()
    }

    fn list() -> Vec<u8> {
        ConnectionList {
            sender: NodeId::A,
            boot: 77,
            sequence: 3,
            entries: alloc::vec![ConnectionEntry {
                local_address: [10, 0, 0, 1],
                local_port: 4420,
                host_port: 50000,
                host_address: [10, 0, 0, 9],
            }],
        }
        .emit()
    }

    #[test]
    fn both_kinds_round_trip_through_version_2() {
        for plain in [heartbeat(), list()] {
            let sealed = seal(&plain, &auth(), &key()).unwrap();
            assert_eq!(sealed.len(), plain.len() - 24 + OVERHEAD);
            assert_eq!(sealed[4], 2);
            let view = Sealed::parse(&sealed).unwrap();
            assert_eq!(view.auth, auth());
            assert_eq!(view.sender, NodeId::A);
            assert!(view.verify(&key()));
            assert_eq!(view.to_plain(), plain);
        }
    }

    #[test]
    fn layout_is_as_specified() {
        let sealed = seal(&heartbeat(), &auth(), &key()).unwrap();
        assert_eq!(&sealed[..4], b"TDHA");
        assert_eq!(sealed[5], control::kind::HEARTBEAT);
        assert_eq!(sealed[6], 0);
        assert_eq!(sealed[7], 1);
        assert_eq!(&sealed[16..18], &[0, control::HEARTBEAT_LEN as u8]);
        assert_eq!(sealed[18], 1);
        assert_eq!(&sealed[24..32], &0x1111u64.to_be_bytes());
        assert_eq!(&sealed[32..40], &0x2222u64.to_be_bytes());
        assert_eq!(&sealed[40..48], &9u64.to_be_bytes());
        assert_eq!(sealed.len(), 48 + control::HEARTBEAT_LEN + 32);
        assert!(key().verify(
            &[&sealed[..48 + control::HEARTBEAT_LEN]],
            &sealed[48 + control::HEARTBEAT_LEN..]
        ));
        let listed = seal(&list(), &auth(), &key()).unwrap();
        assert_eq!(&listed[..4], b"TDCN");
        assert_eq!(listed[5], 0);
        assert_eq!(&listed[6..8], &[0, 1]);
        assert_eq!(&listed[16..18], &[0, 0]);
        assert_eq!(listed.len(), 48 + 12 + 32);
    }

    #[test]
    fn every_bit_flip_fails_the_mac_or_the_structure() {
        for plain in [heartbeat(), list()] {
            let sealed = seal(&plain, &auth(), &key()).unwrap();
            for at in 0..sealed.len() {
                for bit in 0..8 {
                    let mut bytes = sealed.clone();
                    bytes[at] ^= 1 << bit;
                    if let Ok(view) = Sealed::parse(&bytes) {
                        assert!(!view.verify(&key()), "flip {at}:{bit} verified");
                    }
                }
            }
            for n in 0..sealed.len() {
                assert!(Sealed::parse(&sealed[..n]).is_err());
            }
            let mut long = sealed.clone();
            long.push(0);
            assert_eq!(
                Sealed::parse(&long).unwrap_err(),
                Error::InvalidField("length")
            );
        }
    }

    #[test]
    fn version_1_is_refused() {
        assert_eq!(
            Sealed::parse(&heartbeat()).unwrap_err(),
            Error::UnsupportedVersion(1)
        );
        assert_eq!(
            Sealed::parse(&list()).unwrap_err(),
            Error::UnsupportedVersion(1)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let mut b = alloc::vec![0u8; len];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            if len >= 5 {
                b[..4].copy_from_slice(if len % 2 == 0 { b"TDHA" } else { b"TDCN" });
                b[4] = 2;
            }
            if let Ok(view) = Sealed::parse(&b) {
                let _ = view.verify(&key());
                let _ = view.to_plain();
            }
        }
    }
}
