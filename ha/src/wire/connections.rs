//! Connection-list datagrams: each data node tells its peer which front-end
//! NVMe/TCP connections it holds, so that a survivor that takes over the
//! peer's front-end address can reset the hosts' half-open connections to
//! the dead node at once (the "tickle" of `docs/ha-protocol.md` §16).
//!
//! Sent as UDP datagrams on every link, on the control port, told apart from
//! control datagrams by their magic. Layout (big-endian):
//! ```text
//!  0 magic    u32  0x5444434E ("TDCN")
//!  4 version  u8   1
//!  5 sender   u8   0 = a, 1 = b
//!  6 count    u16  entries that follow, at most MAX_ENTRIES
//!  8 boot     u32  chosen at random by the sender at each boot
//! 12 sequence u32  bumped by the sender whenever its list changes
//! 16 reserved u32  0
//! 20 crc32c   u32  CRC-32C of header and entries with this field zero
//! 24 entries  count × 12 bytes:
//!      0 local address u32  the sender's address the host connected to
//!      4 local port    u16
//!      6 host port     u16
//!      8 host address  u32
//! ```
//! The datagram is exactly `24 + 12 × count` bytes long.

use alloc::vec::Vec;

use super::{CRC32C, Reader, Writer};
use crate::Error;
use crate::types::NodeId;

pub const MAGIC: u32 = 0x5444_434E;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
pub const ENTRY_LEN: usize = 12;
/// Entries one datagram may carry (1,176 bytes in all: one Ethernet frame).
pub const MAX_ENTRIES: usize = 96;

/// One TCP connection of a host to a data node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectionEntry {
    pub local_address: [u8; 4],
    pub local_port: u16,
    pub host_port: u16,
    pub host_address: [u8; 4],
}

/// A validated connection list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionList {
    pub sender: NodeId,
    pub boot: u32,
    pub sequence: u32,
    pub entries: Vec<ConnectionEntry>,
}

/// Whether `bytes` claim to be a connection-list datagram (its magic), so a
/// receiver can route them before validating anything else.
pub fn is_connection_list(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC.to_be_bytes()[..])
}

fn compute_crc(datagram: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(datagram.get(..20).unwrap_or(&[]));
    digest.update(&[0u8; 4]);
    digest.update(datagram.get(24..).unwrap_or(&[]));
    digest.finalize()
}

fn usable_host(address: [u8; 4]) -> bool {
    // Unspecified, "this network", loopback, multicast, reserved and broadcast
    // addresses are never a host's end of a TCP connection.
    !matches!(address[0], 0 | 127 | 224..=255)
}

impl ConnectionList {
    /// Checks every field of untrusted bytes; never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let mut reader = Reader::new(bytes);
        if reader.u32() != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = reader.u8();
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version as u16));
        }
        let sender = reader.u8();
        let count = reader.u16() as usize;
        let boot = reader.u32();
        let sequence = reader.u32();
        let reserved = reader.u32();
        let crc = reader.u32();
        if count > MAX_ENTRIES {
            return Err(Error::TooLarge {
                length: count as u64,
                max: MAX_ENTRIES as u64,
            });
        }
        let length = HEADER_LEN + count * ENTRY_LEN;
        if bytes.len() < length {
            return Err(Error::Truncated);
        }
        if bytes.len() > length {
            return Err(Error::InvalidField("length"));
        }
        if crc != compute_crc(bytes) {
            return Err(Error::BadChecksum);
        }
        let sender = match NodeId::from_u8(sender) {
            Some(node) if node.is_data_node() => node,
            _ => return Err(Error::InvalidField("sender")),
        };
        if reserved != 0 {
            return Err(Error::InvalidField("reserved"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let mut local_address = [0u8; 4];
            local_address.copy_from_slice(reader.bytes(4));
            let local_port = reader.u16();
            let host_port = reader.u16();
            let mut host_address = [0u8; 4];
            host_address.copy_from_slice(reader.bytes(4));
            if local_port == 0 || host_port == 0 {
                return Err(Error::InvalidField("port"));
            }
            if !usable_host(host_address) || !usable_host(local_address) {
                return Err(Error::InvalidField("address"));
            }
            entries.push(ConnectionEntry {
                local_address,
                local_port,
                host_port,
                host_address,
            });
        }
        Ok(Self {
            sender,
            boot,
            sequence,
            entries,
        })
    }

    /// The datagram; at most [`MAX_ENTRIES`] entries are sent (the caller
    /// keeps the list within it).
    pub fn emit(&self) -> Vec<u8> {
        let entries = &self.entries[..self.entries.len().min(MAX_ENTRIES)];
        let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_LEN);
        Writer(&mut out)
            .u32(MAGIC)
            .u8(VERSION)
            .u8(self.sender.index() as u8)
            .u16(entries.len() as u16)
            .u32(self.boot)
            .u32(self.sequence)
            .u32(0)
            .u32(0);
        for entry in entries {
            Writer(&mut out)
                .bytes(&entry.local_address)
                .u16(entry.local_port)
                .u16(entry.host_port)
                .bytes(&entry.host_address);
        }
        let crc = compute_crc(&out);
        out[20..24].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Whether this list supersedes `current` (the newest one held from the
    /// same sender): any list from another boot, or a later sequence number
    /// (serial-number arithmetic, so the counter may wrap).
    pub fn supersedes(&self, current: Option<&ConnectionList>) -> bool {
        match current {
            None => true,
            Some(current) => {
                self.boot != current.boot
                    || (self.sequence.wrapping_sub(current.sequence) as i32) > 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample(count: usize) -> ConnectionList {
        ConnectionList {
            sender: NodeId::B,
            boot: 0xdead_beef,
            sequence: 7,
            entries: (0..count)
                .map(|i| ConnectionEntry {
                    local_address: [10, 79, 0, 2],
                    local_port: 4420,
                    host_port: 40000 + i as u16,
                    host_address: [10, 79, 0, 20],
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        for count in [0, 1, 5, MAX_ENTRIES] {
            let list = sample(count);
            let bytes = list.emit();
            assert_eq!(bytes.len(), HEADER_LEN + count * ENTRY_LEN);
            assert!(is_connection_list(&bytes));
            assert_eq!(ConnectionList::parse(&bytes), Ok(list));
        }
    }

    #[test]
    fn layout_is_as_specified() {
        let bytes = sample(1).emit();
        assert_eq!(&bytes[..4], b"TDCN");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 1);
        assert_eq!(&bytes[6..8], &[0, 1]);
        assert_eq!(&bytes[8..12], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&bytes[12..16], &[0, 0, 0, 7]);
        assert_eq!(
            &bytes[24..],
            &[10, 79, 0, 2, 0x11, 0x44, 0x9c, 0x40, 10, 79, 0, 20]
        );
    }

    fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc = compute_crc(&bytes);
        bytes[20..24].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn rejects_bad_input() {
        let good = sample(2).emit();
        assert_eq!(ConnectionList::parse(&good[..10]), Err(Error::Truncated));
        assert_eq!(
            ConnectionList::parse(&good[..good.len() - 1]),
            Err(Error::Truncated)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            ConnectionList::parse(&long),
            Err(Error::InvalidField("length"))
        );
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(ConnectionList::parse(&bad), Err(Error::BadMagic));
        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(
            ConnectionList::parse(&bad),
            Err(Error::UnsupportedVersion(2))
        );
        let mut bad = good.clone();
        bad[30] ^= 0x40;
        assert_eq!(ConnectionList::parse(&bad), Err(Error::BadChecksum));
        let mut bad = good.clone();
        bad[6..8].copy_from_slice(&(MAX_ENTRIES as u16 + 1).to_be_bytes());
        assert!(matches!(
            ConnectionList::parse(&bad),
            Err(Error::TooLarge { .. })
        ));
        let mut bad = good.clone();
        bad[5] = 2; // the witness has no connections to report
        assert_eq!(
            ConnectionList::parse(&with_crc(bad)),
            Err(Error::InvalidField("sender"))
        );
        let mut bad = good.clone();
        bad[16] = 1;
        assert_eq!(
            ConnectionList::parse(&with_crc(bad)),
            Err(Error::InvalidField("reserved"))
        );
        let mut bad = good.clone();
        bad[24 + 6..24 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(
            ConnectionList::parse(&with_crc(bad)),
            Err(Error::InvalidField("port"))
        );
        let mut bad = good.clone();
        bad[24 + 8..24 + 12].copy_from_slice(&[255, 255, 255, 255]);
        assert_eq!(
            ConnectionList::parse(&with_crc(bad)),
            Err(Error::InvalidField("address"))
        );
        assert!(!is_connection_list(&[0x54, 0x44]));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let good = sample(3).emit();
        // Every truncation and every single-byte corruption of a good datagram.
        for len in 0..good.len() {
            let _ = ConnectionList::parse(&good[..len]);
        }
        for at in 0..good.len() {
            for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[at] = value;
                let _ = ConnectionList::parse(&bytes);
                let _ = ConnectionList::parse(&with_crc(bytes));
            }
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut bytes = vec![0u8; (seed % 200) as usize];
            for byte in bytes.iter_mut() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *byte = (seed >> 16) as u8;
            }
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&MAGIC.to_be_bytes());
            }
            let _ = ConnectionList::parse(&bytes);
        }
    }

    #[test]
    fn newer_lists_supersede_older_ones() {
        let current = sample(1);
        let mut next = current.clone();
        assert!(
            !next.supersedes(Some(&current)),
            "a duplicate (the other link's copy) is not news"
        );
        next.sequence = 8;
        assert!(next.supersedes(Some(&current)));
        assert!(
            !current.supersedes(Some(&next)),
            "a late copy of an older list"
        );
        next.sequence = 0;
        next.boot = 1;
        assert!(next.supersedes(Some(&current)), "the sender rebooted");
        let mut wrapped = current.clone();
        wrapped.sequence = u32::MAX;
        let mut after = wrapped.clone();
        after.sequence = 0;
        assert!(after.supersedes(Some(&wrapped)));
        assert!(current.supersedes(None));
    }
}
