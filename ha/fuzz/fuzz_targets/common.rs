//! Shared by the HA fuzz targets: the pair key they use and the version-1
//! framing that lets every input reach the message decoders behind the
//! magic, version, length and checksum checks.
#![allow(dead_code)]

use tandem_ha::auth::{Keys, PairKey};
use tandem_ha::wire::CRC32C;
use tandem_ha::wire::{connections, control};

pub fn keys() -> Keys {
    Keys::derive(&PairKey::from_bytes([0x5a; 32]))
}

/// A version-1 control datagram (`docs/ha-protocol.md` §3) around `rest`:
/// kind, sender, link, epoch and reserved bytes from the input, then the
/// payload; magic, version, length and checksum filled in.
pub fn control_datagram(rest: &[u8]) -> Vec<u8> {
    let mut datagram = vec![0u8; control::HEADER_LEN];
    datagram[..4].copy_from_slice(&control::MAGIC.to_be_bytes());
    datagram[4] = control::VERSION;
    let fields = &rest[..rest.len().min(11)];
    datagram[5..5 + fields.len()].copy_from_slice(fields);
    let payload = rest.get(11..).unwrap_or(&[]);
    let payload = &payload[..payload.len().min(control::MAX_PAYLOAD)];
    datagram[16..18].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    datagram[18..20].fill(0);
    datagram.extend_from_slice(payload);
    let crc = CRC32C.checksum(&datagram);
    datagram[20..24].copy_from_slice(&crc.to_be_bytes());
    datagram
}

/// A version-1 connection list around `rest`: the sender, boot, sequence
/// and reserved bytes from the input, then whole entries; magic, version,
/// count and checksum filled in.
pub fn connection_list(rest: &[u8]) -> Vec<u8> {
    let mut datagram = vec![0u8; connections::HEADER_LEN];
    datagram[..4].copy_from_slice(&connections::MAGIC.to_be_bytes());
    datagram[4] = connections::VERSION;
    datagram[5] = rest.first().copied().unwrap_or(0);
    let fields = rest.get(1..13).unwrap_or(&[]);
    datagram[8..8 + fields.len()].copy_from_slice(fields);
    let entries = rest.get(13..).unwrap_or(&[]);
    let count = (entries.len() / connections::ENTRY_LEN).min(connections::MAX_ENTRIES);
    datagram[6..8].copy_from_slice(&(count as u16).to_be_bytes());
    datagram.extend_from_slice(&entries[..count * connections::ENTRY_LEN]);
    let crc = CRC32C.checksum(&datagram);
    datagram[20..24].copy_from_slice(&crc.to_be_bytes());
    datagram
}
