//! Frames of the replication stream (a TCP connection on the replication
//! link). The stream is ordered: a Config frame sent before a Write is
//! applied before it.
//!
//! Header (32 bytes, big-endian):
//! ```text
//!  0 magic    u32  0x54445253 ("TDRS")
//!  4 version  u8   2
//!  5 kind     u8
//!  6 sender   u8
//!  7 flags    u8   bit 0: forced unit access (Write), else 0
//!  8 length   u32  payload length
//! 12 hcrc     u32  CRC-32C of the 32 header bytes with this field zero
//! 16 epoch    u64  the sender's record epoch (writes) or epoch (acks)
//! 24 seq      u64  write sequence number (Write, WriteAck), flush number
//!                   (Flush, FlushAck), else 0
//! 32 payload
//! ```

use alloc::vec::Vec;

use super::{CRC32C, RECORD_LEN, Reader, Writer};
use crate::Error;
use crate::generations::Generations;
use crate::types::{DataState, EpochRecord, NodeId, Role};

pub const MAGIC: u32 = 0x5444_5253;
/// Version 2 added Flush/FlushAck and the forced-unit-access flag: a
/// version 1 receiver would acknowledge writes from its volatile cache
/// without ever flushing it.
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 32;
/// Largest data carried by one Write or ResyncData frame.
pub const MAX_DATA: usize = 1 << 20;
/// Largest payload of any frame (data plus its 8-byte offset).
pub const MAX_PAYLOAD: usize = MAX_DATA + 16;

pub mod kind {
    pub const HELLO: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const WRITE: u8 = 3;
    pub const WRITE_ACK: u8 = 4;
    pub const BITMAP: u8 = 5;
    pub const BITMAP_DONE: u8 = 6;
    pub const RESYNC_DATA: u8 = 7;
    pub const RESYNC_ACK: u8 = 8;
    pub const RESYNC_DONE: u8 = 9;
    pub const FLUSH: u8 = 10;
    pub const FLUSH_ACK: u8 = 11;
    pub const WRITE_ZEROES: u8 = 12;
    pub const DEALLOCATE: u8 = 13;
    pub const VERIFY_REQUEST: u8 = 14;
    pub const VERIFY_REPLY: u8 = 15;
}

/// Bits of a Hello's `features` byte: what the sender understands beyond
/// its version's frames. A receiver ignores bits it does not know, so a
/// feature is used only once the peer's Hello announced it.
pub mod feature {
    /// WriteZeroes frames (kind 12).
    pub const WRITE_ZEROES: u8 = 1;
    /// Deallocate frames (kind 13).
    pub const DEALLOCATE: u8 = 2;
    /// The Hello carries the data generations ([`super::HelloData`]) and
    /// ResyncDone the source's current generation. A node that sets it
    /// refuses a peer that does not.
    pub const GENERATIONS: u8 = 4;
    /// VerifyRequest and VerifyReply frames (kinds 14, 15).
    pub const VERIFY: u8 = 8;
    /// The Hello's data extension is followed by the sender's agreed
    /// namespace size ([`super::HelloData::agreed_bytes`]); set only with
    /// [`GENERATIONS`]. A peer without it serves its whole data area.
    pub const SIZES: u8 = 16;
}

/// Length of a Hello's payload without the data generations, and with them.
pub const HELLO_BASE_LEN: usize = 48;
pub const HELLO_LEN: usize = HELLO_BASE_LEN + 56;
/// Length of a Hello's payload with the agreed size too.
pub const HELLO_SIZES_LEN: usize = HELLO_LEN + 8;

/// Bits of [`HelloData::flags`].
pub mod hello_flag {
    /// The sender's disk was formatted blank and never paired since.
    pub const BLANK: u8 = 1;
}

/// Header flag of a Write frame: the receiver makes the data durable (not
/// merely written to its volatile cache) before acknowledging it.
pub const FLAG_FORCE_UNIT_ACCESS: u8 = 1;

/// Outcome of applying a replicated write or resync chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Done on the receiver: written (Write, ResyncData: in its disk's
    /// volatile cache unless forced unit access was asked) or flushed (Flush).
    Ok = 0,
    /// Refused: the receiver is in a different epoch or promised another
    /// candidate (fencing token check). The header carries its epoch.
    Fenced = 1,
    /// The receiver's disk failed the write.
    IoError = 2,
}

impl AckStatus {
    /// `Ok` for a disk operation that succeeded, `IoError` otherwise.
    pub fn of_disk(ok: bool) -> AckStatus {
        if ok {
            AckStatus::Ok
        } else {
            AckStatus::IoError
        }
    }
    fn from_u8(v: u8) -> Option<AckStatus> {
        match v {
            0 => Some(AckStatus::Ok),
            1 => Some(AckStatus::Fenced),
            2 => Some(AckStatus::IoError),
            _ => None,
        }
    }
}

/// First frame each side sends after the connection is established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub role: Role,
    pub data_state: DataState,
    pub record: EpochRecord,
    pub region_size: u32,
    pub region_count: u64,
    pub data_bytes: u64,
    /// [`feature`] bits: what the sender understands.
    pub features: u8,
    /// Present when [`feature::GENERATIONS`] is set.
    pub data: Option<HelloData>,
}

/// What a node tells its peer about its data (the Hello's extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloData {
    pub pair_id: u64,
    pub generations: Generations,
    /// The generation the sender would give a new pair (used by both nodes
    /// when two blank disks meet: node a's).
    pub new_generation: u64,
    /// [`hello_flag`] bits.
    pub flags: u8,
    /// The sender's agreed namespace size (0: not agreed yet), present with
    /// [`feature::SIZES`].
    pub agreed_bytes: Option<u64>,
}

/// A decoded stream frame. Data-carrying frames borrow from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Hello(Hello),
    /// The primary's committed record; sent before any Write of that epoch.
    Config(EpochRecord),
    Write {
        offset: u64,
        data: &'a [u8],
        /// Durable before acknowledged (the host's FUA bit).
        force_unit_access: bool,
    },
    WriteAck {
        status: AckStatus,
    },
    /// A host Write Zeroes replicated: `len` bytes of zeroes at `offset`,
    /// acknowledged like a Write (a WriteAck with the same `seq`). Sent
    /// only to a peer whose Hello announced [`feature::WRITE_ZEROES`].
    WriteZeroes {
        offset: u64,
        len: u64,
    },
    /// A host Deallocate replicated: the receiver discards `len` bytes at
    /// `offset` (their content is unspecified afterwards) and acknowledges
    /// with a WriteAck of the same `seq`. Sent only to a peer whose Hello
    /// announced [`feature::DEALLOCATE`].
    Deallocate {
        offset: u64,
        len: u64,
    },
    /// A run of the sender's dirty-region bitmap.
    Bitmap {
        first_region: u64,
        bit_count: u32,
        bits: &'a [u8],
    },
    BitmapDone,
    ResyncData {
        offset: u64,
        data: &'a [u8],
    },
    ResyncAck {
        offset: u64,
        len: u32,
        status: AckStatus,
    },
    /// `current`: the source's current generation, which the target takes
    /// when it becomes UpToDate (0 from a peer without the feature).
    ResyncDone {
        current: u64,
    },
    /// Online verification: the receiver reads `len` bytes at `offset`
    /// (after every write sent before this frame) and compares their
    /// CRC-64 with `digest`. Sent only to a peer that announced
    /// [`feature::VERIFY`].
    VerifyRequest {
        offset: u64,
        len: u32,
        digest: u64,
    },
    /// The answer: `equal` is false when the digests differ (or the read
    /// failed).
    VerifyReply {
        offset: u64,
        len: u32,
        equal: bool,
    },
    /// Make every write this receiver has acknowledged durable; `seq` numbers
    /// the flush.
    Flush,
    FlushAck {
        status: AckStatus,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub sender: NodeId,
    pub epoch: u64,
    pub seq: u64,
    pub body: Body<'a>,
}

fn header_crc(h: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(h.get(..12).unwrap_or(&[]));
    d.update(&[0u8; 4]);
    d.update(h.get(16..HEADER_LEN).unwrap_or(&[]));
    d.finalize()
}

/// Checks a frame header and returns `(kind, sender, payload length)`.
fn check_header(h: &[u8]) -> Result<(u8, NodeId, usize), Error> {
    if h.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let mut r = Reader::new(h);
    if r.u32() != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = r.u8();
    let kind = r.u8();
    let sender = r.u8();
    let _flags = r.u8();
    let length = r.u32() as usize;
    let crc = r.u32();
    if crc != header_crc(h) {
        return Err(Error::BadChecksum);
    }
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version as u16));
    }
    let sender = NodeId::from_u8(sender)
        .filter(|n| n.is_data_node())
        .ok_or(Error::InvalidField("sender"))?;
    if length > MAX_PAYLOAD {
        return Err(Error::TooLarge {
            length: length as u64,
            max: MAX_PAYLOAD as u64,
        });
    }
    Ok((kind, sender, length))
}

/// The length of the frame (header and payload) whose header starts
/// `bytes`, after checking that header as a receiver does.
pub fn frame_len(bytes: &[u8]) -> Result<usize, Error> {
    check_header(bytes).map(|(_, _, length)| HEADER_LEN + length)
}

/// Zero-copy view of one frame (header and payload).
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps untrusted bytes: checks magic, version, header checksum, sender,
    /// the length limit, and that the whole payload is present.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let (_, _, length) = check_header(buffer.as_ref())?;
        if buffer.as_ref().len() < HEADER_LEN + length {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }
    fn field(&self) -> Reader<'_> {
        Reader::new(self.buffer.as_ref())
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
    pub fn flags(&self) -> u8 {
        let mut r = self.field();
        r.skip(7);
        r.u8()
    }
    pub fn length(&self) -> u32 {
        let mut r = self.field();
        r.skip(8);
        r.u32()
    }
    pub fn epoch(&self) -> u64 {
        let mut r = self.field();
        r.skip(16);
        r.u64()
    }
    pub fn seq(&self) -> u64 {
        let mut r = self.field();
        r.skip(24);
        r.u64()
    }
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(HEADER_LEN..HEADER_LEN + self.length() as usize)
            .unwrap_or(&[])
    }
}

impl<'a> Frame<'a> {
    /// Decodes one complete frame (header and payload) from untrusted bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, Error> {
        let p = Packet::new_checked(bytes)?;
        let kind = p.kind();
        let sender = NodeId::from_u8(p.sender()).ok_or(Error::InvalidField("sender"))?;
        let epoch = p.epoch();
        let seq = p.seq();
        let payload = bytes
            .get(HEADER_LEN..HEADER_LEN + p.length() as usize)
            .ok_or(Error::Truncated)?;
        let need = |n: usize| {
            if payload.len() < n {
                Err(Error::Truncated)
            } else {
                Ok(())
            }
        };
        let mut r = Reader::new(payload);
        let body = match kind {
            kind::HELLO => {
                need(8 + RECORD_LEN + 24)?;
                let role = Role::from_u8(r.u8()).ok_or(Error::InvalidField("hello.role"))?;
                let data_state =
                    DataState::from_u8(r.u8()).ok_or(Error::InvalidField("hello.data_state"))?;
                let features = r.u8();
                r.skip(5);
                let record = r.record()?;
                let region_size = r.u32();
                r.skip(4);
                let region_count = r.u64();
                let data_bytes = r.u64();
                let data = if features & feature::GENERATIONS != 0 {
                    need(HELLO_LEN)?;
                    let pair_id = r.u64();
                    let current = r.u64();
                    let bitmap = r.u64();
                    let history = [r.u64(), r.u64()];
                    let new_generation = r.u64();
                    let flags = r.u8();
                    r.skip(7);
                    let agreed_bytes = if features & feature::SIZES != 0 {
                        need(HELLO_SIZES_LEN)?;
                        Some(r.u64())
                    } else {
                        None
                    };
                    Some(HelloData {
                        pair_id,
                        generations: Generations {
                            current,
                            bitmap,
                            history,
                        },
                        new_generation,
                        flags,
                        agreed_bytes,
                    })
                } else {
                    None
                };
                Body::Hello(Hello {
                    role,
                    data_state,
                    record,
                    region_size,
                    region_count,
                    data_bytes,
                    features,
                    data,
                })
            }
            kind::CONFIG => {
                need(RECORD_LEN)?;
                Body::Config(r.record()?)
            }
            kind::WRITE | kind::RESYNC_DATA => {
                need(8)?;
                let offset = r.u64();
                let data = r.rest();
                if data.is_empty() {
                    return Err(Error::InvalidField("data length"));
                }
                if kind == kind::WRITE {
                    Body::Write {
                        offset,
                        data,
                        force_unit_access: p.flags() & FLAG_FORCE_UNIT_ACCESS != 0,
                    }
                } else {
                    Body::ResyncData { offset, data }
                }
            }
            kind::WRITE_ZEROES | kind::DEALLOCATE => {
                need(16)?;
                let offset = r.u64();
                let len = r.u64();
                // Whole sectors only: what the receiver's disk can take.
                if len == 0 || len % 512 != 0 || offset % 512 != 0 {
                    return Err(Error::InvalidField(if kind == kind::WRITE_ZEROES {
                        "write_zeroes.len"
                    } else {
                        "deallocate.len"
                    }));
                }
                if kind == kind::WRITE_ZEROES {
                    Body::WriteZeroes { offset, len }
                } else {
                    Body::Deallocate { offset, len }
                }
            }
            kind::WRITE_ACK => {
                need(8)?;
                let status =
                    AckStatus::from_u8(r.u8()).ok_or(Error::InvalidField("write_ack.status"))?;
                Body::WriteAck { status }
            }
            kind::BITMAP => {
                need(16)?;
                let first_region = r.u64();
                let bit_count = r.u32();
                r.skip(4);
                let bits = r.rest();
                if (bit_count as usize).div_ceil(8) != bits.len() {
                    return Err(Error::InvalidField("bitmap.bit_count"));
                }
                Body::Bitmap {
                    first_region,
                    bit_count,
                    bits,
                }
            }
            kind::BITMAP_DONE => Body::BitmapDone,
            kind::RESYNC_ACK => {
                need(16)?;
                let offset = r.u64();
                let len = r.u32();
                let status =
                    AckStatus::from_u8(r.u8()).ok_or(Error::InvalidField("resync_ack.status"))?;
                Body::ResyncAck {
                    offset,
                    len,
                    status,
                }
            }
            kind::RESYNC_DONE => Body::ResyncDone {
                // Empty from a peer without the generations feature.
                current: if payload.len() >= 8 { r.u64() } else { 0 },
            },
            kind::FLUSH => Body::Flush,
            kind::VERIFY_REQUEST => {
                need(24)?;
                let offset = r.u64();
                let len = r.u32();
                r.skip(4);
                let digest = r.u64();
                if len == 0 || len as usize > MAX_DATA {
                    return Err(Error::InvalidField("verify.len"));
                }
                Body::VerifyRequest {
                    offset,
                    len,
                    digest,
                }
            }
            kind::VERIFY_REPLY => {
                need(16)?;
                let offset = r.u64();
                let len = r.u32();
                let equal = match r.u8() {
                    0 => false,
                    1 => true,
                    _ => return Err(Error::InvalidField("verify_reply.equal")),
                };
                Body::VerifyReply { offset, len, equal }
            }
            kind::FLUSH_ACK => {
                need(8)?;
                let status =
                    AckStatus::from_u8(r.u8()).ok_or(Error::InvalidField("flush_ack.status"))?;
                Body::FlushAck { status }
            }
            k => return Err(Error::UnknownKind(k)),
        };
        Ok(Frame {
            sender,
            epoch,
            seq,
            body,
        })
    }

    /// Encodes the frame.
    pub fn emit(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut w = Writer(&mut payload);
        let mut flags = 0;
        let kind = match &self.body {
            Body::Hello(h) => {
                w.u8(h.role as u8)
                    .u8(h.data_state as u8)
                    .u8(h.features)
                    .zeros(5)
                    .record(&h.record)
                    .u32(h.region_size)
                    .zeros(4)
                    .u64(h.region_count)
                    .u64(h.data_bytes);
                // The extension goes exactly when the feature bit says so.
                if h.features & feature::GENERATIONS != 0 {
                    let d = h.data.unwrap_or(HelloData {
                        pair_id: 0,
                        generations: Generations::NONE,
                        new_generation: 0,
                        flags: 0,
                        agreed_bytes: None,
                    });
                    let g = d.generations;
                    w.u64(d.pair_id)
                        .u64(g.current)
                        .u64(g.bitmap)
                        .u64(g.history[0])
                        .u64(g.history[1])
                        .u64(d.new_generation)
                        .u8(d.flags)
                        .zeros(7);
                    if h.features & feature::SIZES != 0 {
                        w.u64(d.agreed_bytes.unwrap_or(0));
                    }
                }
                kind::HELLO
            }
            Body::Config(rec) => {
                w.record(rec);
                kind::CONFIG
            }
            Body::Write {
                offset,
                data,
                force_unit_access,
            } => {
                w.u64(*offset).bytes(data);
                if *force_unit_access {
                    flags |= FLAG_FORCE_UNIT_ACCESS;
                }
                kind::WRITE
            }
            Body::ResyncData { offset, data } => {
                w.u64(*offset).bytes(data);
                kind::RESYNC_DATA
            }
            Body::WriteAck { status } => {
                w.u8(*status as u8).zeros(7);
                kind::WRITE_ACK
            }
            Body::WriteZeroes { offset, len } => {
                w.u64(*offset).u64(*len);
                kind::WRITE_ZEROES
            }
            Body::Deallocate { offset, len } => {
                w.u64(*offset).u64(*len);
                kind::DEALLOCATE
            }
            Body::Bitmap {
                first_region,
                bit_count,
                bits,
            } => {
                w.u64(*first_region).u32(*bit_count).zeros(4).bytes(bits);
                kind::BITMAP
            }
            Body::BitmapDone => kind::BITMAP_DONE,
            Body::ResyncAck {
                offset,
                len,
                status,
            } => {
                w.u64(*offset).u32(*len).u8(*status as u8).zeros(3);
                kind::RESYNC_ACK
            }
            Body::ResyncDone { current } => {
                w.u64(*current);
                kind::RESYNC_DONE
            }
            Body::Flush => kind::FLUSH,
            Body::VerifyRequest {
                offset,
                len,
                digest,
            } => {
                w.u64(*offset).u32(*len).zeros(4).u64(*digest);
                kind::VERIFY_REQUEST
            }
            Body::VerifyReply { offset, len, equal } => {
                w.u64(*offset).u32(*len).u8(*equal as u8).zeros(3);
                kind::VERIFY_REPLY
            }
            Body::FlushAck { status } => {
                w.u8(*status as u8).zeros(7);
                kind::FLUSH_ACK
            }
        };
        let mut out = encode_header(
            kind,
            flags,
            self.sender,
            self.epoch,
            self.seq,
            payload.len(),
        );
        out.extend_from_slice(&payload);
        out
    }
}

fn encode_header(
    kind: u8,
    flags: u8,
    sender: NodeId,
    epoch: u64,
    seq: u64,
    payload_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 16);
    Writer(&mut out)
        .u32(MAGIC)
        .u8(VERSION)
        .u8(kind)
        .u8(sender.to_u8())
        .u8(flags)
        .u32(payload_len as u32)
        .u32(0)
        .u64(epoch)
        .u64(seq);
    let crc = header_crc(&out);
    if let Some(slot) = out.get_mut(12..16) {
        slot.copy_from_slice(&crc.to_be_bytes());
    }
    out
}

/// The header and offset of a Write frame whose `len` data bytes follow
/// directly on the stream: lets the sender transmit host data without copying
/// it into a frame buffer.
pub fn write_frame_prefix(
    sender: NodeId,
    epoch: u64,
    seq: u64,
    offset: u64,
    len: usize,
    force_unit_access: bool,
) -> Vec<u8> {
    let flags = if force_unit_access {
        FLAG_FORCE_UNIT_ACCESS
    } else {
        0
    };
    let mut out = encode_header(kind::WRITE, flags, sender, epoch, seq, 8 + len);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Cuts a byte stream into frames. Holds at most one frame's worth of bytes
/// (bounded by [`MAX_PAYLOAD`]); a header error poisons the decoder, since
/// the frame boundary is lost and the stream must be reset.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    poisoned: Option<Error>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }
    /// Bytes held and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
    /// Returns the next complete frame's bytes (`Ok(None)` when more bytes are
    /// needed), or the error that broke the stream.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let length = match check_header(avail) {
            Ok((_, _, length)) => length,
            Err(e) => {
                self.poisoned = Some(e);
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        };
        let total = HEADER_LEN + length;
        if avail.len() < total {
            self.compact();
            return Ok(None);
        }
        let frame = avail[..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let rec = EpochRecord {
            epoch: 5,
            primary: Some(NodeId::B),
            outdated: None,
        };
        let data = [7u8; 100];
        let bodies = [
            Body::Hello(Hello {
                role: Role::Secondary,
                data_state: DataState::Outdated,
                record: rec,
                region_size: 65536,
                region_count: 1234,
                data_bytes: 1234 * 65536,
                features: feature::WRITE_ZEROES,
                data: None,
            }),
            Body::Hello(Hello {
                role: Role::Primary,
                data_state: DataState::UpToDate,
                record: rec,
                region_size: 65536,
                region_count: 1234,
                data_bytes: 1234 * 65536,
                features: feature::GENERATIONS | feature::DEALLOCATE,
                data: Some(HelloData {
                    pair_id: 0xabcdef,
                    generations: Generations {
                        current: 11,
                        bitmap: 12,
                        history: [13, 14],
                    },
                    new_generation: 15,
                    flags: hello_flag::BLANK,
                    agreed_bytes: None,
                }),
            }),
            Body::Hello(Hello {
                role: Role::Secondary,
                data_state: DataState::Inconsistent,
                record: rec,
                region_size: 65536,
                region_count: 2000,
                data_bytes: 2000 * 65536,
                features: feature::GENERATIONS | feature::SIZES,
                data: Some(HelloData {
                    pair_id: 0xabcdef,
                    generations: Generations::NONE,
                    new_generation: 16,
                    flags: 0,
                    agreed_bytes: Some(1234 * 65536),
                }),
            }),
            Body::Config(rec),
            Body::Write {
                offset: 4096,
                data: &data,
                force_unit_access: false,
            },
            Body::Write {
                offset: 8192,
                data: &data[..5],
                force_unit_access: true,
            },
            Body::WriteAck {
                status: AckStatus::Fenced,
            },
            Body::WriteZeroes {
                offset: 1 << 20,
                len: 3 << 20,
            },
            Body::Deallocate {
                offset: 1 << 30,
                len: 1 << 30,
            },
            Body::Bitmap {
                first_region: 8,
                bit_count: 13,
                bits: &[0xff, 0x1f],
            },
            Body::BitmapDone,
            Body::VerifyRequest {
                offset: 1 << 20,
                len: 65536,
                digest: 0xfeed_beef_0102_0304,
            },
            Body::VerifyReply {
                offset: 1 << 20,
                len: 65536,
                equal: false,
            },
            Body::ResyncData {
                offset: 1 << 20,
                data: &data[..10],
            },
            Body::ResyncAck {
                offset: 1 << 20,
                len: 10,
                status: AckStatus::Ok,
            },
            Body::ResyncDone {
                current: 0x0102_0304_0506_0708,
            },
            Body::Flush,
            Body::FlushAck {
                status: AckStatus::IoError,
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                Frame {
                    sender: NodeId::A,
                    epoch: 3,
                    seq: i as u64,
                    body,
                }
                .emit()
            })
            .collect()
    }

    #[test]
    fn every_frame_round_trips() {
        for bytes in samples() {
            let f = Frame::parse(&bytes).unwrap();
            assert_eq!(f.emit(), bytes);
        }
    }

    #[test]
    fn hello_features_ride_in_a_byte_older_receivers_skip() {
        let hello = Hello {
            role: Role::Primary,
            data_state: DataState::UpToDate,
            record: EpochRecord {
                epoch: 1,
                primary: Some(NodeId::A),
                outdated: None,
            },
            region_size: 65536,
            region_count: 16,
            data_bytes: 16 * 65536,
            features: feature::WRITE_ZEROES,
            data: None,
        };
        let bytes = Frame {
            sender: NodeId::A,
            epoch: 1,
            seq: 0,
            body: Body::Hello(hello),
        }
        .emit();
        // The byte after role and data state, reserved (zero) before.
        assert_eq!(bytes[HEADER_LEN + 2], feature::WRITE_ZEROES);
        let mut without = bytes.clone();
        without[HEADER_LEN + 2] = 0;
        let header_crc_at = 12;
        let crc = header_crc(&without[..HEADER_LEN]);
        without[header_crc_at..header_crc_at + 4].copy_from_slice(&crc.to_be_bytes());
        let Body::Hello(old) = Frame::parse(&without).unwrap().body else {
            panic!("not a hello")
        };
        assert_eq!(
            old,
            Hello {
                features: 0,
                ..hello
            }
        );
    }

    #[test]
    fn write_zeroes_must_cover_whole_sectors() {
        let frame = |offset: u64, len: u64| {
            Frame {
                sender: NodeId::A,
                epoch: 2,
                seq: 9,
                body: Body::WriteZeroes { offset, len },
            }
            .emit()
        };
        assert_eq!(
            Frame::parse(&frame(4096, 8192)).unwrap().body,
            Body::WriteZeroes {
                offset: 4096,
                len: 8192
            }
        );
        for (offset, len) in [(0, 0), (0, 100), (100, 512), (512, 513)] {
            assert!(
                matches!(
                    Frame::parse(&frame(offset, len)),
                    Err(Error::InvalidField("write_zeroes.len"))
                ),
                "{offset} {len}"
            );
        }
    }

    #[test]
    fn write_prefix_plus_data_is_a_write_frame() {
        let mut bytes = write_frame_prefix(NodeId::B, 9, 77, 8192, 3, false);
        bytes.extend_from_slice(&[1, 2, 3]);
        let f = Frame::parse(&bytes).unwrap();
        assert_eq!(
            f.body,
            Body::Write {
                offset: 8192,
                data: &[1, 2, 3],
                force_unit_access: false,
            }
        );
        let mut fua = write_frame_prefix(NodeId::B, 9, 78, 8192, 3, true);
        fua.extend_from_slice(&[1, 2, 3]);
        let p = Packet::new_checked(&fua[..]).unwrap();
        assert_eq!(p.flags(), FLAG_FORCE_UNIT_ACCESS);
        assert!(matches!(
            Frame::parse(&fua).unwrap().body,
            Body::Write {
                force_unit_access: true,
                ..
            }
        ));
        assert_eq!((f.sender, f.epoch, f.seq), (NodeId::B, 9, 77));
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (p.kind(), p.sender(), p.length(), p.epoch(), p.seq()),
            (kind::WRITE, 1, 11, 9, 77)
        );
        assert_eq!(&p.payload()[8..], &[1, 2, 3]);
        assert!(matches!(
            Packet::new_checked(&bytes[..bytes.len() - 1]),
            Err(Error::Truncated)
        ));
    }

    #[test]
    fn decoder_handles_any_split_and_coalescing() {
        let all: Vec<u8> = samples().concat();
        for chunk in [1usize, 2, 3, 7, 31, 32, 33, 100, 4096] {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for piece in all.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, samples(), "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn decoder_rejects_oversized_and_corrupt_headers_and_stays_broken() {
        let mut h = encode_header(kind::WRITE, 0, NodeId::A, 1, 1, MAX_PAYLOAD + 1);
        let mut d = Decoder::new();
        d.push(&h);
        assert!(matches!(d.next_frame(), Err(Error::TooLarge { .. })));
        assert!(d.next_frame().is_err());
        h[20] ^= 1;
        let mut d = Decoder::new();
        d.push(&h);
        assert_eq!(d.next_frame(), Err(Error::BadChecksum));
    }

    #[test]
    fn truncated_and_invalid_payloads_are_rejected() {
        for bytes in samples() {
            for n in 0..bytes.len() {
                assert!(Frame::parse(&bytes[..n]).is_err());
            }
        }
        // Bitmap with a bit count that does not match its bytes.
        let f = Frame {
            sender: NodeId::A,
            epoch: 1,
            seq: 0,
            body: Body::Bitmap {
                first_region: 0,
                bit_count: 20,
                bits: &[1],
            },
        };
        assert_eq!(
            Frame::parse(&f.emit()),
            Err(Error::InvalidField("bitmap.bit_count"))
        );
        // The witness never speaks on the replication stream.
        let f = Frame {
            sender: NodeId::Witness,
            epoch: 1,
            seq: 0,
            body: Body::ResyncDone { current: 9 },
        };
        assert_eq!(Frame::parse(&f.emit()), Err(Error::InvalidField("sender")));
        // An empty write.
        let f = Frame {
            sender: NodeId::A,
            epoch: 1,
            seq: 0,
            body: Body::Write {
                offset: 0,
                data: &[],
                force_unit_access: false,
            },
        };
        assert_eq!(
            Frame::parse(&f.emit()),
            Err(Error::InvalidField("data length"))
        );
        // A flush acknowledgement with an unknown status.
        let mut bytes = Frame {
            sender: NodeId::B,
            epoch: 1,
            seq: 4,
            body: Body::FlushAck {
                status: AckStatus::Ok,
            },
        }
        .emit();
        bytes[HEADER_LEN] = 9;
        assert_eq!(
            Frame::parse(&bytes),
            Err(Error::InvalidField("flush_ack.status"))
        );
        // A version 1 frame (no flush, no forced unit access) is refused.
        let mut old = Frame {
            sender: NodeId::B,
            epoch: 1,
            seq: 0,
            body: Body::ResyncDone { current: 9 },
        }
        .emit();
        old[4] = 1;
        let crc = header_crc(&old);
        old[12..16].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(Frame::parse(&old), Err(Error::UnsupportedVersion(1)));
    }
}
