//! Wire formats: NVMe/TCP PDUs, NVMe submission/completion queue entries,
//! status codes. Everything here is pure encoding/decoding.

pub mod pdu;
pub mod sqe;
pub mod status;

pub use pdu::{DataHeader, IcReq, IcResp, Layout, Packet, Pdu, PduType, R2t, Repr, TermReq};
pub use sqe::{Completion, Sqe};
pub use status::Status;

// Little-endian helpers. Callers guarantee the range is inside the buffer
// (every use is at a fixed offset inside a buffer whose length was checked).
#[inline]
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
#[inline]
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
#[inline]
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    (le32(b, off) as u64) | ((le32(b, off + 4) as u64) << 32)
}
#[inline]
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copies `s` into `dst`, padding the rest with `pad` (spaces for the ASCII
/// identity fields of Identify, NULs for NQNs). Longer strings are cut.
pub(crate) fn put_str(dst: &mut [u8], s: &[u8], pad: u8) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s[..n]);
    dst[n..].fill(pad);
}

/// Reads a NUL-terminated (or full-width) string field.
pub(crate) fn get_str(src: &[u8]) -> &[u8] {
    let end = src.iter().position(|&c| c == 0).unwrap_or(src.len());
    &src[..end]
}
