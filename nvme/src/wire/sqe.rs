//! NVMe submission queue entries (64 bytes) and completion queue entries (16 bytes).

use super::{Status, le16, le32, le64, put16, put32, put64};

/// Read access to the fields of a 64-byte submission queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sqe<'a>(pub &'a [u8; 64]);

/// SGL descriptor types (byte 15 of the descriptor) used by NVMe/TCP.
pub mod sgl {
    /// Data Block descriptor, subtype Offset: data is in the capsule.
    pub const IN_CAPSULE: u8 = 0x01;
    /// Transport SGL Data Block, subtype Transport specific (A): data moves by
    /// C2HData, or by R2T + H2CData.
    pub const TRANSPORT: u8 = 0x5A;
}

/// Opcode of the Fabrics command set.
pub const OPCODE_FABRICS: u8 = 0x7F;

impl<'a> Sqe<'a> {
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// FUSE bits (1:0) and PSDT (7:6).
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn cid(&self) -> u16 {
        le16(self.0, 2)
    }
    pub fn nsid(&self) -> u32 {
        le32(self.0, 4)
    }
    /// Fabrics command type (shares the byte with NSID).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    pub fn sgl_addr(&self) -> u64 {
        le64(self.0, 24)
    }
    pub fn sgl_length(&self) -> u32 {
        le32(self.0, 32)
    }
    pub fn sgl_type(&self) -> u8 {
        self.0[39]
    }
    /// Command dword N (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        le32(self.0, 40 + (n - 10) * 4)
    }
    pub fn u8_at(&self, off: usize) -> u8 {
        self.0[off]
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        le16(self.0, off)
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        le32(self.0, off)
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        le64(self.0, off)
    }
}

/// Builds submission queue entries (host side and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqeBuilder(pub [u8; 64]);

impl SqeBuilder {
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut b = [0u8; 64];
        b[0] = opcode;
        b[1] = 0x40; // PSDT: SGL for data
        put16(&mut b, 2, cid);
        SqeBuilder(b)
    }
    pub fn fabrics(fctype: u8, cid: u16) -> Self {
        let mut s = Self::new(OPCODE_FABRICS, cid);
        s.0[4] = fctype;
        s
    }
    pub fn nsid(mut self, nsid: u32) -> Self {
        put32(&mut self.0, 4, nsid);
        self
    }
    pub fn cdw(mut self, n: usize, v: u32) -> Self {
        put32(&mut self.0, 40 + (n - 10) * 4, v);
        self
    }
    pub fn u8_at(mut self, off: usize, v: u8) -> Self {
        self.0[off] = v;
        self
    }
    pub fn u16_at(mut self, off: usize, v: u16) -> Self {
        put16(&mut self.0, off, v);
        self
    }
    pub fn u32_at(mut self, off: usize, v: u32) -> Self {
        put32(&mut self.0, off, v);
        self
    }
    pub fn u64_at(mut self, off: usize, v: u64) -> Self {
        put64(&mut self.0, off, v);
        self
    }
    /// SGL: `len` bytes of data, in the capsule or moved by the transport.
    pub fn sgl(mut self, len: u32, in_capsule: bool) -> Self {
        put64(&mut self.0, 24, 0);
        put32(&mut self.0, 32, len);
        self.0[39] = if in_capsule {
            sgl::IN_CAPSULE
        } else {
            sgl::TRANSPORT
        };
        self
    }
    pub fn build(self) -> [u8; 64] {
        self.0
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Command specific result (DW0 and DW1).
    pub result: u64,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub status: Status,
}

impl Completion {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put64(&mut b, 0, self.result);
        put16(&mut b, 8, self.sq_head);
        put16(&mut b, 10, self.sq_id);
        put16(&mut b, 12, self.cid);
        put16(&mut b, 14, self.status.to_field());
        b
    }

    pub fn from_bytes(b: &[u8; 16]) -> Completion {
        Completion {
            result: le64(b, 0),
            sq_head: le16(b, 8),
            sq_id: le16(b, 10),
            cid: le16(b, 12),
            status: Status::from_field(le16(b, 14)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_round_trip_and_status_field() {
        for status in [
            Status::SUCCESS,
            Status::INVALID_FIELD,
            Status::ANA_TRANSITION,
            Status::CONNECT_INVALID_HOST,
        ] {
            let c = Completion {
                result: 0x1122_3344_5566_7788,
                sq_head: 5,
                sq_id: 2,
                cid: 0xBEEF,
                status,
            };
            assert_eq!(Completion::from_bytes(&c.to_bytes()), c);
        }
        assert_eq!(Status::INVALID_FIELD.to_field(), 0x8000 | (0x02 << 1));
        assert_eq!(Status::ANA_INACCESSIBLE.to_field(), (3 << 9) | (0x02 << 1));
        assert_eq!(
            Status::CONNECT_INVALID_HOST.to_field(),
            0x8000 | (1 << 9) | (0x84 << 1)
        );
    }

    #[test]
    fn sqe_fields() {
        let b = SqeBuilder::new(0x02, 0x1234)
            .nsid(7)
            .cdw(10, 1)
            .cdw(15, 9)
            .sgl(4096, false)
            .build();
        let s = Sqe(&b);
        assert_eq!(
            (s.opcode(), s.cid(), s.nsid(), s.cdw(10), s.cdw(15)),
            (2, 0x1234, 7, 1, 9)
        );
        assert_eq!(
            (s.sgl_length(), s.sgl_type(), s.sgl_addr()),
            (4096, sgl::TRANSPORT, 0)
        );
        let f = SqeBuilder::fabrics(0x01, 1).build();
        assert_eq!((Sqe(&f).opcode(), Sqe(&f).fctype()), (OPCODE_FABRICS, 1));
    }
}
