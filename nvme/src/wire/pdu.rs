//! NVMe/TCP PDUs (transport specification 1.0).
//!
//! [`Packet`] reads and writes the fields of a PDU in a byte buffer; [`Repr`]
//! is the validated header of one PDU. Parsing never panics and never
//! allocates, whatever the bytes: every length is checked against the buffer
//! and against the fixed header length of the PDU type.
//!
//! Layout of every PDU:
//!
//! ```text
//! | common header (8) | type-specific header | HDGST (4, if flag) | pad to PDO | data | DDGST (4, if flag) |
//! |<------------------ HLEN ------------------>|
//! |<------------------------------------------ PLEN ------------------------------------------------->|
//! ```

use crate::digest::Crc32c;
use crate::error::Error;
use crate::wire::{le16, le32, put16, put32};

pub type Result<T> = core::result::Result<T, Error>;

/// PDU types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => Self::IcReq,
            0x01 => Self::IcResp,
            0x02 => Self::H2CTermReq,
            0x03 => Self::C2HTermReq,
            0x04 => Self::CapsuleCmd,
            0x05 => Self::CapsuleResp,
            0x06 => Self::H2CData,
            0x07 => Self::C2HData,
            0x09 => Self::R2T,
            _ => return None,
        })
    }

    /// The fixed HLEN of this PDU type.
    pub const fn header_len(self) -> usize {
        match self {
            Self::IcReq | Self::IcResp => 128,
            Self::H2CTermReq | Self::C2HTermReq => 24,
            Self::CapsuleCmd => 72,
            Self::CapsuleResp => 24,
            Self::H2CData | Self::C2HData | Self::R2T => 24,
        }
    }

    /// Whether a PDU of this type may carry data.
    pub const fn carries_data(self) -> bool {
        matches!(
            self,
            Self::CapsuleCmd | Self::H2CData | Self::C2HData | Self::H2CTermReq | Self::C2HTermReq
        )
    }

    /// Whether digests apply to this type (never to IC and termination PDUs).
    pub const fn has_digests(self) -> bool {
        !matches!(
            self,
            Self::IcReq | Self::IcResp | Self::H2CTermReq | Self::C2HTermReq
        )
    }

    /// The flag bits defined for this type.
    const fn allowed_flags(self) -> u8 {
        match self {
            Self::IcReq | Self::IcResp | Self::H2CTermReq | Self::C2HTermReq => 0,
            Self::CapsuleCmd => flags::HDGSTF | flags::DDGSTF,
            Self::CapsuleResp | Self::R2T => flags::HDGSTF,
            Self::H2CData => flags::HDGSTF | flags::DDGSTF | flags::DATA_LAST,
            Self::C2HData => flags::HDGSTF | flags::DDGSTF | flags::DATA_LAST | flags::DATA_SUCCESS,
        }
    }
}

/// Flag bits of the common header.
pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    pub const DATA_LAST: u8 = 0x04;
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Largest header this crate handles (ICReq/ICResp).
pub const MAX_HEADER_LEN: usize = 128;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;
/// Largest termination request PDU (spec: 152 bytes).
pub const MAX_TERM_PDU_LEN: usize = 152;
/// Largest data a termination request carries (the offending header).
pub const MAX_TERM_DATA_LEN: usize = MAX_TERM_PDU_LEN - 24;

/// Protocol format version 1.0.
pub const PFV_1_0: u16 = 0;

/// ICReq/ICResp digest bits.
pub const DIGEST_HEADER: u8 = 0x01;
pub const DIGEST_DATA: u8 = 0x02;

mod field {
    pub const TYPE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const HLEN: usize = 2;
    pub const PDO: usize = 3;
    pub const PLEN: usize = 4;
    // ICReq / ICResp
    pub const PFV: usize = 8;
    pub const HPDA_CPDA: usize = 10;
    pub const DGST: usize = 11;
    pub const MAXR2T_MAXH2CDATA: usize = 12;
    // TermReq
    pub const FES: usize = 8;
    pub const FEI: usize = 10;
    // data / R2T
    pub const CCCID: usize = 8;
    pub const TTAG: usize = 10;
    pub const OFFSET: usize = 12;
    pub const LENGTH: usize = 16;
    // capsules
    pub const SQE: usize = 8;
    pub const CQE: usize = 8;
}

/// Field offsets other modules name in FEI values.
pub mod offsets {
    pub const TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
    pub const PFV: u32 = 8;
    pub const HPDA: u32 = 10;
    pub const DGST: u32 = 11;
    pub const CCCID: u32 = 8;
    pub const TTAG: u32 = 10;
    pub const DATAO: u32 = 12;
    pub const DATAL: u32 = 16;
}

/// Zero-copy view of a PDU in a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer that holds at least the whole header (HLEN plus the header
    /// digest if its flag is set). The data may be absent.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < COMMON_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let need = self.hlen() as usize
            + if self.flags() & flags::HDGSTF != 0 {
                DIGEST_LEN
            } else {
                0
            };
        if need < COMMON_HEADER_LEN {
            return Err(Error::InvalidHeaderField {
                offset: offsets::HLEN,
            });
        }
        if b.len() < need {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn pdu_type(&self) -> u8 {
        self.b()[field::TYPE]
    }
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }
    pub fn hlen(&self) -> u8 {
        self.b()[field::HLEN]
    }
    pub fn pdo(&self) -> u8 {
        self.b()[field::PDO]
    }
    pub fn plen(&self) -> u32 {
        le32(self.b(), field::PLEN)
    }
    /// Header length including the header digest, if any.
    pub fn header_len(&self) -> usize {
        self.hlen() as usize
            + if self.flags() & flags::HDGSTF != 0 {
                DIGEST_LEN
            } else {
                0
            }
    }
    fn u8_at(&self, off: usize) -> u8 {
        self.b()[off]
    }
    fn u16_at(&self, off: usize) -> u16 {
        le16(self.b(), off)
    }
    fn u32_at(&self, off: usize) -> u32 {
        le32(self.b(), off)
    }
    /// The header bytes (HLEN) without digest.
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.hlen() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_common(&mut self, t: PduType, flags: u8, hlen: u8, pdo: u8, plen: u32) {
        let b = self.bm();
        b[field::TYPE] = t as u8;
        b[field::FLAGS] = flags;
        b[field::HLEN] = hlen;
        b[field::PDO] = pdo;
        put32(b, field::PLEN, plen);
    }
}

/// ICReq parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment (0's based, in dwords).
    pub hpda: u8,
    /// DIGEST_HEADER | DIGEST_DATA requested.
    pub digest: u8,
    /// Maximum number of outstanding R2Ts per command (0's based).
    pub maxr2t: u32,
}

/// ICResp parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    pub cpda: u8,
    pub digest: u8,
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

/// H2CData / C2HData header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    /// Transfer tag (H2CData only; zero in C2HData).
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
    pub last: bool,
    /// C2HData only: no CapsuleResp follows, the command succeeded.
    pub success: bool,
}

/// R2T header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

/// The validated header of one PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repr {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd([u8; 64]),
    CapsuleResp([u8; 16]),
    H2CData(DataHeader),
    C2HData(DataHeader),
    R2T(R2t),
}

/// Where the data of a PDU is, as derived from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Header length including the header digest.
    pub header_len: usize,
    /// Offset of the data (PDO; equals `header_len` when there is no padding).
    pub data_offset: usize,
    pub data_len: usize,
    pub header_digest: bool,
    pub data_digest: bool,
    /// PLEN: the whole PDU.
    pub total_len: usize,
}

impl Repr {
    pub fn pdu_type(&self) -> PduType {
        match self {
            Repr::IcReq(_) => PduType::IcReq,
            Repr::IcResp(_) => PduType::IcResp,
            Repr::H2CTermReq(_) => PduType::H2CTermReq,
            Repr::C2HTermReq(_) => PduType::C2HTermReq,
            Repr::CapsuleCmd(_) => PduType::CapsuleCmd,
            Repr::CapsuleResp(_) => PduType::CapsuleResp,
            Repr::H2CData(_) => PduType::H2CData,
            Repr::C2HData(_) => PduType::C2HData,
            Repr::R2T(_) => PduType::R2T,
        }
    }

    /// Validates the common header alone (the first 8 bytes) and returns the PDU
    /// type and the header length including the header digest. Lets a
    /// streaming receiver know how many header bytes to gather.
    pub fn check_common(common: &[u8]) -> Result<(PduType, usize)> {
        if common.len() < COMMON_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Packet::new_unchecked(common);
        let t = PduType::from_u8(p.pdu_type()).ok_or(Error::UnexpectedPduType {
            pdu_type: p.pdu_type(),
        })?;
        if p.hlen() as usize != t.header_len() {
            return Err(Error::InvalidHeaderField {
                offset: offsets::HLEN,
            });
        }
        if p.flags() & !t.allowed_flags() != 0 {
            return Err(Error::InvalidHeaderField {
                offset: offsets::FLAGS,
            });
        }
        let header_len = p.header_len();
        let plen = p.plen() as usize;
        if plen < header_len {
            return Err(Error::InvalidHeaderField {
                offset: offsets::PLEN,
            });
        }
        Ok((t, header_len))
    }

    /// Parses and validates a PDU header. `buf` must hold at least the header and
    /// its digest (the data need not be present). Checks the header digest.
    pub fn parse(buf: &[u8], crc: &Crc32c) -> Result<(Repr, Layout)> {
        let (t, header_len) = Self::check_common(buf)?;
        if buf.len() < header_len {
            return Err(Error::Truncated);
        }
        let p = Packet::new_unchecked(buf);
        let fl = p.flags();
        let hlen = p.hlen() as usize;
        let header_digest = fl & flags::HDGSTF != 0;
        if header_digest {
            let received = le32(buf, hlen);
            let computed = crc.checksum(&buf[..hlen]);
            if received != computed {
                return Err(Error::HeaderDigest { received, computed });
            }
        }
        let data_digest = fl & flags::DDGSTF != 0;
        let plen = p.plen() as usize;
        let pdo = p.pdo() as usize;
        let ddgst_len = if data_digest { DIGEST_LEN } else { 0 };

        let layout = if t.carries_data() && plen > header_len {
            // Termination requests have no PDO: their data follows the header.
            let data_offset = if t.has_digests() { pdo } else { header_len };
            if t.has_digests() && (pdo < header_len || pdo > plen) {
                return Err(Error::InvalidHeaderField {
                    offset: offsets::PDO,
                });
            }
            if plen < data_offset + ddgst_len + 1 {
                return Err(Error::InvalidHeaderField {
                    offset: offsets::PLEN,
                });
            }
            Layout {
                header_len,
                data_offset,
                data_len: plen - data_offset - ddgst_len,
                header_digest,
                data_digest,
                total_len: plen,
            }
        } else {
            if plen != header_len {
                return Err(Error::InvalidHeaderField {
                    offset: offsets::PLEN,
                });
            }
            if data_digest {
                return Err(Error::InvalidHeaderField {
                    offset: offsets::FLAGS,
                });
            }
            Layout {
                header_len,
                data_offset: header_len,
                data_len: 0,
                header_digest,
                data_digest: false,
                total_len: plen,
            }
        };

        let repr = match t {
            PduType::IcReq => Repr::IcReq(IcReq {
                pfv: p.u16_at(field::PFV),
                hpda: p.u8_at(field::HPDA_CPDA),
                digest: p.u8_at(field::DGST),
                maxr2t: p.u32_at(field::MAXR2T_MAXH2CDATA),
            }),
            PduType::IcResp => Repr::IcResp(IcResp {
                pfv: p.u16_at(field::PFV),
                cpda: p.u8_at(field::HPDA_CPDA),
                digest: p.u8_at(field::DGST),
                maxh2cdata: p.u32_at(field::MAXR2T_MAXH2CDATA),
            }),
            PduType::H2CTermReq | PduType::C2HTermReq => {
                if layout.data_len > MAX_TERM_DATA_LEN {
                    return Err(Error::InvalidHeaderField {
                        offset: offsets::PLEN,
                    });
                }
                let tr = TermReq {
                    fes: p.u16_at(field::FES),
                    fei: p.u32_at(field::FEI),
                };
                if t == PduType::H2CTermReq {
                    Repr::H2CTermReq(tr)
                } else {
                    Repr::C2HTermReq(tr)
                }
            }
            PduType::CapsuleCmd => {
                let mut sqe = [0u8; 64];
                sqe.copy_from_slice(&buf[field::SQE..field::SQE + 64]);
                Repr::CapsuleCmd(sqe)
            }
            PduType::CapsuleResp => {
                let mut cqe = [0u8; 16];
                cqe.copy_from_slice(&buf[field::CQE..field::CQE + 16]);
                Repr::CapsuleResp(cqe)
            }
            PduType::H2CData | PduType::C2HData => {
                let d = DataHeader {
                    cccid: p.u16_at(field::CCCID),
                    ttag: if t == PduType::H2CData {
                        p.u16_at(field::TTAG)
                    } else {
                        0
                    },
                    offset: p.u32_at(field::OFFSET),
                    length: p.u32_at(field::LENGTH),
                    last: fl & flags::DATA_LAST != 0,
                    success: fl & flags::DATA_SUCCESS != 0,
                };
                if d.length == 0 {
                    return Err(Error::InvalidHeaderField {
                        offset: offsets::DATAL,
                    });
                }
                if d.length as usize != layout.data_len {
                    return Err(Error::InvalidHeaderField {
                        offset: offsets::PLEN,
                    });
                }
                if d.success && !d.last {
                    return Err(Error::InvalidHeaderField {
                        offset: offsets::FLAGS,
                    });
                }
                if t == PduType::H2CData {
                    Repr::H2CData(d)
                } else {
                    Repr::C2HData(d)
                }
            }
            PduType::R2T => {
                let r = R2t {
                    cccid: p.u16_at(field::CCCID),
                    ttag: p.u16_at(field::TTAG),
                    offset: p.u32_at(field::OFFSET),
                    length: p.u32_at(field::LENGTH),
                };
                if r.length == 0 {
                    return Err(Error::InvalidHeaderField {
                        offset: offsets::DATAL,
                    });
                }
                Repr::R2T(r)
            }
        };
        Ok((repr, layout))
    }

    /// Length of the emitted header including the header digest.
    pub fn header_len(&self, header_digest: bool) -> usize {
        let t = self.pdu_type();
        t.header_len()
            + if header_digest && t.has_digests() {
                DIGEST_LEN
            } else {
                0
            }
    }

    /// Writes the header (and header digest) of a PDU carrying `data_len` bytes
    /// of data into `buf`, which must hold [`Repr::header_len`] bytes. Data (and
    /// the data digest) are the caller's to append. Returns the header length.
    ///
    /// Digests are ignored for the PDU types that never carry them.
    pub fn emit(
        &self,
        buf: &mut [u8],
        data_len: usize,
        header_digest: bool,
        data_digest: bool,
        crc: &Crc32c,
    ) -> usize {
        let t = self.pdu_type();
        let hd = header_digest && t.has_digests();
        let dd = data_digest && t.has_digests() && data_len > 0;
        let hlen = t.header_len();
        let header_len = hlen + if hd { DIGEST_LEN } else { 0 };
        let buf = &mut buf[..header_len];
        buf.fill(0);
        let mut fl = 0;
        if hd {
            fl |= flags::HDGSTF;
        }
        if dd {
            fl |= flags::DDGSTF;
        }
        match self {
            Repr::H2CData(d) | Repr::C2HData(d) => {
                if d.last {
                    fl |= flags::DATA_LAST;
                }
                if d.success && t == PduType::C2HData {
                    fl |= flags::DATA_SUCCESS;
                }
            }
            _ => {}
        }
        let pdo = if data_len > 0 && t.has_digests() {
            header_len as u8
        } else {
            0
        };
        let plen = header_len + data_len + if dd { DIGEST_LEN } else { 0 };
        let mut p = Packet::new_unchecked(&mut *buf);
        p.set_common(t, fl, hlen as u8, pdo, plen as u32);
        match self {
            Repr::IcReq(r) => {
                put16(buf, field::PFV, r.pfv);
                buf[field::HPDA_CPDA] = r.hpda;
                buf[field::DGST] = r.digest;
                put32(buf, field::MAXR2T_MAXH2CDATA, r.maxr2t);
            }
            Repr::IcResp(r) => {
                put16(buf, field::PFV, r.pfv);
                buf[field::HPDA_CPDA] = r.cpda;
                buf[field::DGST] = r.digest;
                put32(buf, field::MAXR2T_MAXH2CDATA, r.maxh2cdata);
            }
            Repr::H2CTermReq(r) | Repr::C2HTermReq(r) => {
                put16(buf, field::FES, r.fes);
                put32(buf, field::FEI, r.fei);
            }
            Repr::CapsuleCmd(sqe) => buf[field::SQE..field::SQE + 64].copy_from_slice(sqe),
            Repr::CapsuleResp(cqe) => buf[field::CQE..field::CQE + 16].copy_from_slice(cqe),
            Repr::H2CData(d) | Repr::C2HData(d) => {
                put16(buf, field::CCCID, d.cccid);
                if t == PduType::H2CData {
                    put16(buf, field::TTAG, d.ttag);
                }
                put32(buf, field::OFFSET, d.offset);
                put32(buf, field::LENGTH, d.length);
            }
            Repr::R2T(r) => {
                put16(buf, field::CCCID, r.cccid);
                put16(buf, field::TTAG, r.ttag);
                put32(buf, field::OFFSET, r.offset);
                put32(buf, field::LENGTH, r.length);
            }
        }
        if hd {
            let d = crc.checksum(&buf[..hlen]);
            put32(buf, hlen, d);
        }
        header_len
    }
}

/// One whole PDU decoded from a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu<'a> {
    pub repr: Repr,
    pub layout: Layout,
    pub data: &'a [u8],
}

/// Decodes one whole PDU from the start of `buf`, checking both digests.
/// Returns [`Error::Truncated`] if `buf` does not yet hold all of it.
pub fn decode<'a>(buf: &'a [u8], crc: &Crc32c) -> Result<Pdu<'a>> {
    let (repr, layout) = Repr::parse(buf, crc)?;
    if buf.len() < layout.total_len {
        return Err(Error::Truncated);
    }
    let data = &buf[layout.data_offset..layout.data_offset + layout.data_len];
    if layout.data_digest {
        let at = layout.data_offset + layout.data_len;
        let received = le32(buf, at);
        let computed = crc.checksum(data);
        if received != computed {
            return Err(Error::DataDigest { received, computed });
        }
    }
    Ok(Pdu { repr, layout, data })
}

/// Encodes a whole PDU (header, data, digests) at the end of `out`.
#[cfg(any(test, feature = "host"))]
pub fn encode(
    repr: &Repr,
    data: &[u8],
    header_digest: bool,
    data_digest: bool,
    crc: &Crc32c,
    out: &mut alloc::vec::Vec<u8>,
) {
    let mut hdr = [0u8; MAX_HEADER_LEN + DIGEST_LEN];
    let n = repr.emit(&mut hdr, data.len(), header_digest, data_digest, crc);
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(data);
    if data_digest && repr.pdu_type().has_digests() && !data.is_empty() {
        out.extend_from_slice(&crc.checksum(data).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn crc() -> Crc32c {
        Crc32c::default()
    }

    fn all_reprs() -> Vec<(Repr, Vec<u8>)> {
        let mut sqe = [0u8; 64];
        sqe.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let mut cqe = [0u8; 16];
        cqe.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = 0xF0 | i as u8);
        let data: Vec<u8> = (0..100u8).collect();
        vec![
            (
                Repr::IcReq(IcReq {
                    pfv: 0,
                    hpda: 0,
                    digest: 3,
                    maxr2t: 7,
                }),
                vec![],
            ),
            (
                Repr::IcResp(IcResp {
                    pfv: 0,
                    cpda: 0,
                    digest: 1,
                    maxh2cdata: 131072,
                }),
                vec![],
            ),
            (Repr::H2CTermReq(TermReq { fes: 1, fei: 4 }), vec![1, 2, 3]),
            (Repr::C2HTermReq(TermReq { fes: 3, fei: 0 }), vec![]),
            (Repr::CapsuleCmd(sqe), vec![]),
            (Repr::CapsuleCmd(sqe), data.clone()),
            (Repr::CapsuleResp(cqe), vec![]),
            (
                Repr::H2CData(DataHeader {
                    cccid: 5,
                    ttag: 5,
                    offset: 4096,
                    length: 100,
                    last: true,
                    success: false,
                }),
                data.clone(),
            ),
            (
                Repr::C2HData(DataHeader {
                    cccid: 9,
                    ttag: 0,
                    offset: 0,
                    length: 100,
                    last: true,
                    success: true,
                }),
                data.clone(),
            ),
            (
                Repr::C2HData(DataHeader {
                    cccid: 9,
                    ttag: 0,
                    offset: 8,
                    length: 100,
                    last: false,
                    success: false,
                }),
                data,
            ),
            (
                Repr::R2T(R2t {
                    cccid: 3,
                    ttag: 3,
                    offset: 0,
                    length: 65536,
                }),
                vec![],
            ),
        ]
    }

    #[test]
    fn round_trip_every_pdu_type_with_and_without_digests() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            for (repr, data) in all_reprs() {
                let mut buf = Vec::new();
                encode(&repr, &data, hd, dd, &crc(), &mut buf);
                let pdu = decode(&buf, &crc()).unwrap();
                assert_eq!(pdu.repr, repr);
                assert_eq!(pdu.data, &data[..]);
                assert_eq!(pdu.layout.total_len, buf.len());
                let digests = repr.pdu_type().has_digests();
                assert_eq!(pdu.layout.header_digest, hd && digests);
                assert_eq!(pdu.layout.data_digest, dd && digests && !data.is_empty());
                // Every strict prefix is merely truncated, never an error or a panic.
                for n in 0..buf.len() {
                    assert_eq!(
                        decode(&buf[..n], &crc()),
                        Err(Error::Truncated),
                        "{repr:?} prefix {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn packet_accessors() {
        let mut buf = Vec::new();
        encode(
            &Repr::R2T(R2t {
                cccid: 1,
                ttag: 2,
                offset: 3,
                length: 4,
            }),
            &[],
            true,
            false,
            &crc(),
            &mut buf,
        );
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (p.pdu_type(), p.flags(), p.hlen(), p.pdo(), p.plen()),
            (9, flags::HDGSTF, 24, 0, 28)
        );
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.header().len(), 24);
        assert_eq!(
            Packet::new_checked(&buf[..27]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&buf[..3]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = buf.clone();
        bad[2] = 2;
        bad[1] = 0;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::InvalidHeaderField { offset: 2 }
        );
    }

    fn capsule(data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&Repr::CapsuleCmd([0; 64]), data, hd, dd, &crc(), &mut buf);
        buf
    }

    #[test]
    fn rejects_unknown_type() {
        for t in [0x08u8, 0x0A, 0x0B, 0x7F, 0xFF] {
            let mut b = capsule(&[], false, false);
            b[0] = t;
            assert_eq!(
                decode(&b, &crc()),
                Err(Error::UnexpectedPduType { pdu_type: t })
            );
        }
    }

    #[test]
    fn rejects_wrong_hlen() {
        let mut b = capsule(&[], false, false);
        b[2] = 24;
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 2 })
        );
    }

    #[test]
    fn rejects_undefined_flags() {
        let mut b = capsule(&[], false, false);
        b[1] = flags::DATA_LAST;
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 1 })
        );
        let mut ic = Vec::new();
        encode(
            &Repr::IcReq(IcReq {
                pfv: 0,
                hpda: 0,
                digest: 0,
                maxr2t: 0,
            }),
            &[],
            false,
            false,
            &crc(),
            &mut ic,
        );
        ic[1] = flags::HDGSTF;
        assert_eq!(
            decode(&ic, &crc()),
            Err(Error::InvalidHeaderField { offset: 1 })
        );
    }

    #[test]
    fn rejects_plen_below_header() {
        let mut b = capsule(&[], true, false);
        b[4..8].copy_from_slice(&72u32.to_le_bytes());
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 4 })
        );
    }

    #[test]
    fn rejects_plen_on_dataless_types() {
        let mut b = Vec::new();
        encode(
            &Repr::CapsuleResp([0; 16]),
            &[],
            false,
            false,
            &crc(),
            &mut b,
        );
        b[4..8].copy_from_slice(&30u32.to_le_bytes());
        b.extend_from_slice(&[0; 6]);
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 4 })
        );
        let mut ic = Vec::new();
        encode(
            &Repr::IcReq(IcReq {
                pfv: 0,
                hpda: 0,
                digest: 0,
                maxr2t: 0,
            }),
            &[],
            false,
            false,
            &crc(),
            &mut ic,
        );
        ic[4..8].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(
            Repr::parse(&ic, &crc()).unwrap_err(),
            Error::InvalidHeaderField { offset: 4 }
        );
    }

    #[test]
    fn rejects_pdo_outside_pdu() {
        let mut b = capsule(&[1, 2, 3, 4], false, false);
        b[3] = 10; // inside the header
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 3 })
        );
        b[3] = 200; // past PLEN
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 3 })
        );
    }

    #[test]
    fn rejects_data_digest_flag_without_data() {
        let mut b = capsule(&[], false, false);
        b[1] = flags::DDGSTF;
        b[4..8].copy_from_slice(&76u32.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        // PDO 0 with bytes past the header: PDO is wrong.
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 3 })
        );
        // PDO right, but PLEN leaves room for the digest only.
        b[3] = 72;
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 4 })
        );
    }

    #[test]
    fn rejects_header_digest_mismatch() {
        let mut b = capsule(&[], true, false);
        b[20] ^= 1;
        assert!(matches!(
            decode(&b, &crc()),
            Err(Error::HeaderDigest { .. })
        ));
    }

    #[test]
    fn rejects_data_digest_mismatch() {
        let mut b = capsule(&[9; 32], false, true);
        let n = b.len();
        b[n - 5] ^= 0x80;
        assert!(matches!(decode(&b, &crc()), Err(Error::DataDigest { .. })));
    }

    #[test]
    fn rejects_data_length_mismatch_and_zero() {
        let d = DataHeader {
            cccid: 1,
            ttag: 1,
            offset: 0,
            length: 8,
            last: true,
            success: false,
        };
        let mut b = Vec::new();
        encode(&Repr::H2CData(d), &[0; 8], false, false, &crc(), &mut b);
        let mut bad = b.clone();
        bad[16..20].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            decode(&bad, &crc()),
            Err(Error::InvalidHeaderField { offset: 4 })
        );
        bad[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode(&bad, &crc()),
            Err(Error::InvalidHeaderField { offset: 16 })
        );
        let mut r2t = Vec::new();
        encode(
            &Repr::R2T(R2t {
                cccid: 1,
                ttag: 1,
                offset: 0,
                length: 1,
            }),
            &[],
            false,
            false,
            &crc(),
            &mut r2t,
        );
        r2t[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode(&r2t, &crc()),
            Err(Error::InvalidHeaderField { offset: 16 })
        );
    }

    #[test]
    fn rejects_success_without_last() {
        let d = DataHeader {
            cccid: 1,
            ttag: 0,
            offset: 0,
            length: 4,
            last: true,
            success: true,
        };
        let mut b = Vec::new();
        encode(&Repr::C2HData(d), &[0; 4], false, false, &crc(), &mut b);
        b[1] &= !flags::DATA_LAST;
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 1 })
        );
    }

    #[test]
    fn rejects_oversized_termination_request() {
        let mut b = Vec::new();
        encode(
            &Repr::H2CTermReq(TermReq { fes: 1, fei: 0 }),
            &[0; 129],
            false,
            false,
            &crc(),
            &mut b,
        );
        assert_eq!(
            decode(&b, &crc()),
            Err(Error::InvalidHeaderField { offset: 4 })
        );
        let mut ok = Vec::new();
        encode(
            &Repr::H2CTermReq(TermReq { fes: 1, fei: 0 }),
            &[0; 128],
            false,
            false,
            &crc(),
            &mut ok,
        );
        assert!(decode(&ok, &crc()).is_ok());
    }

    #[test]
    fn check_common_reports_header_length() {
        let b = capsule(&[], true, false);
        assert_eq!(Repr::check_common(&b[..8]), Ok((PduType::CapsuleCmd, 76)));
        assert_eq!(Repr::check_common(&b[..7]), Err(Error::Truncated));
    }

    #[test]
    fn fatal_error_status_mapping() {
        use crate::error::FatalErrorStatus as F;
        assert_eq!(
            Error::InvalidHeaderField { offset: 3 }.termination(),
            Some((F::InvalidHeaderField, 3))
        );
        assert_eq!(
            Error::UnexpectedPduType { pdu_type: 8 }.termination(),
            Some((F::InvalidHeaderField, 0))
        );
        assert_eq!(
            Error::PduSequence.termination(),
            Some((F::PduSequenceError, 0))
        );
        assert_eq!(
            Error::HeaderDigest {
                received: 0,
                computed: 1
            }
            .termination(),
            Some((F::HeaderDigestError, 0))
        );
        assert_eq!(
            Error::DataOutOfRange.termination(),
            Some((F::DataTransferOutOfRange, 0))
        );
        assert_eq!(
            Error::DataLimitExceeded {
                length: 1,
                limit: 0
            }
            .termination(),
            Some((F::DataTransferLimitExceeded, 0))
        );
        assert_eq!(
            Error::UnsupportedParameter { offset: 8 }.termination(),
            Some((F::UnsupportedParameter, 8))
        );
        assert_eq!(Error::Truncated.termination(), None);
        for v in 1..=6 {
            assert_eq!(F::from_u16(v).unwrap() as u16, v);
        }
        assert_eq!(F::from_u16(7), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: the fuzz target covers this at scale.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if len > 3 {
                b[0] = (x % 10) as u8;
                b[2] = [24u8, 72, 128][(x % 3) as usize];
            }
            let _ = decode(&b, &crc());
        }
    }
}
