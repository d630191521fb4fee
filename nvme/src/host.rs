//! A small NVMe/TCP initiator (host side), sans-IO like the target.
//!
//! Enough to drive a target in tests: ICReq, Connect, Property Get/Set,
//! admin and I/O commands with in-capsule or R2T-solicited write data, C2HData
//! reassembly, digests. The caller moves bytes: [`Initiator::take_output`] to
//! the socket, socket bytes into [`Initiator::feed`], then
//! [`Initiator::poll_event`] until it returns `None`.
//!
//! It is deliberately permissive in what it sends: tests use
//! [`Initiator::send_raw`] and the encoding helpers to produce bad input.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::digest::Crc32c;
use crate::error::Error;
use crate::wire::pdu::{self, DIGEST_DATA, DIGEST_HEADER, PFV_1_0};
use crate::wire::sqe::SqeBuilder;
use crate::wire::{Completion, DataHeader, IcReq, Repr, Status};

/// Something the target sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// ICResp: the connection is initialized.
    Initialized {
        maxh2cdata: u32,
        header_digest: bool,
        data_digest: bool,
    },
    /// A command completed; `data` holds what C2HData carried for it.
    Completion { cqe: Completion, data: Vec<u8> },
    /// The target sent a C2HTermReq.
    Terminated { fes: u16, fei: u32, data: Vec<u8> },
    /// The target solicited data (R2T); the initiator already queued the H2CData.
    R2T { cid: u16, offset: u32, length: u32 },
}

/// Host-side NVMe/TCP connection state.
#[derive(Debug, Default)]
pub struct Initiator {
    crc: Crc32c,
    hdgst: bool,
    ddgst: bool,
    maxh2cdata: u32,
    rx: Vec<u8>,
    /// Bytes of `rx` already decoded: dropped in one move once they are
    /// most of the buffer, not after every PDU (a 128 KiB read arrives as
    /// many PDUs in one socket read).
    rx_start: usize,
    out: Vec<u8>,
    /// Write data waiting for R2Ts, by command ID.
    pending_writes: BTreeMap<u16, Vec<u8>>,
    /// C2HData received, by command ID.
    reads: BTreeMap<u16, Vec<u8>>,
    next_cid: u16,
}

/// Fabrics command types.
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
}

impl Initiator {
    /// Starts a connection: queues the ICReq.
    pub fn new(header_digest: bool, data_digest: bool) -> Self {
        let mut i = Initiator {
            next_cid: 1,
            ..Default::default()
        };
        let digest = (header_digest as u8 * DIGEST_HEADER) | (data_digest as u8 * DIGEST_DATA);
        let ic = Repr::IcReq(IcReq {
            pfv: PFV_1_0,
            hpda: 0,
            digest,
            maxr2t: 0,
        });
        pdu::encode(&ic, &[], false, false, &i.crc, &mut i.out);
        i
    }

    pub fn header_digest(&self) -> bool {
        self.hdgst
    }
    pub fn data_digest(&self) -> bool {
        self.ddgst
    }

    /// Bytes to send to the target.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Queues raw bytes (for bad-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes received from the target.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.rx_start > 0 && self.rx_start >= self.rx.len() / 2 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        self.rx.extend_from_slice(bytes);
    }

    /// The largest H2CData the target accepts (from ICResp; 0 before it).
    pub fn maxh2cdata(&self) -> u32 {
        self.maxh2cdata
    }

    /// Bytes of C2HData received so far for command `cid`, not yet handed
    /// out with its completion.
    pub fn data_received(&self, cid: u16) -> usize {
        self.reads.get(&cid).map_or(0, Vec::len)
    }

    /// Bytes received and not yet decoded: the part of a PDU still arriving.
    pub fn undecoded(&self) -> usize {
        self.rx.len() - self.rx_start
    }

    /// A fresh command ID.
    pub fn next_cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    /// Encodes a PDU with the negotiated digests.
    pub fn encode(&self, repr: &Repr, data: &[u8], out: &mut Vec<u8>) {
        pdu::encode(repr, data, self.hdgst, self.ddgst, &self.crc, out);
    }

    /// Queues a command capsule. `write` is host-to-controller data: sent in
    /// the capsule if `in_capsule`, otherwise kept for the target's R2Ts (the
    /// SQE's SGL must describe it accordingly; the builders below do).
    pub fn submit(&mut self, sqe: [u8; 64], write: Option<Vec<u8>>, in_capsule: bool) {
        let cid = u16::from_le_bytes([sqe[2], sqe[3]]);
        let mut out = core::mem::take(&mut self.out);
        match write {
            Some(data) if in_capsule => self.encode(&Repr::CapsuleCmd(sqe), &data, &mut out),
            Some(data) => {
                self.encode(&Repr::CapsuleCmd(sqe), &[], &mut out);
                self.pending_writes.insert(cid, data);
            }
            None => self.encode(&Repr::CapsuleCmd(sqe), &[], &mut out),
        }
        self.out = out;
    }

    /// Decodes the next PDU from the received bytes.
    pub fn poll_event(&mut self) -> Result<Option<HostEvent>, Error> {
        loop {
            let pdu = match pdu::decode(&self.rx[self.rx_start..], &self.crc) {
                Ok(p) => p,
                Err(Error::Truncated) => return Ok(None),
                Err(e) => return Err(e),
            };
            let total = pdu.layout.total_len;
            let data = pdu.data.to_vec();
            let repr = pdu.repr.clone();
            self.rx_start += total;
            if self.rx_start == self.rx.len() {
                self.rx.clear();
                self.rx_start = 0;
            }
            let ev = match repr {
                Repr::IcResp(r) => {
                    self.hdgst = r.digest & DIGEST_HEADER != 0;
                    self.ddgst = r.digest & DIGEST_DATA != 0;
                    self.maxh2cdata = r.maxh2cdata;
                    HostEvent::Initialized {
                        maxh2cdata: r.maxh2cdata,
                        header_digest: self.hdgst,
                        data_digest: self.ddgst,
                    }
                }
                Repr::CapsuleResp(cqe) => {
                    let cqe = Completion::from_bytes(&cqe);
                    self.pending_writes.remove(&cqe.cid);
                    let data = self.reads.remove(&cqe.cid).unwrap_or_default();
                    HostEvent::Completion { cqe, data }
                }
                Repr::C2HData(d) => {
                    let buf = self.reads.entry(d.cccid).or_default();
                    if d.offset as usize != buf.len() {
                        return Err(Error::DataOutOfRange);
                    }
                    buf.extend_from_slice(&data);
                    if !d.success {
                        continue;
                    }
                    let data = self.reads.remove(&d.cccid).unwrap_or_default();
                    let cqe = Completion {
                        result: 0,
                        sq_head: 0,
                        sq_id: 0,
                        cid: d.cccid,
                        status: Status::SUCCESS,
                    };
                    HostEvent::Completion { cqe, data }
                }
                Repr::R2T(r) => {
                    let Some(buf) = self.pending_writes.get(&r.cccid) else {
                        // No data kept for it (a test sending H2CData itself).
                        return Ok(Some(HostEvent::R2T {
                            cid: r.cccid,
                            offset: r.offset,
                            length: r.length,
                        }));
                    };
                    let end = r.offset as usize + r.length as usize;
                    if end > buf.len() {
                        return Err(Error::DataOutOfRange);
                    }
                    let chunk = self.maxh2cdata.max(4096) as usize;
                    let mut out = core::mem::take(&mut self.out);
                    let mut off = r.offset as usize;
                    while off < end {
                        let n = chunk.min(end - off);
                        let dh = DataHeader {
                            cccid: r.cccid,
                            ttag: r.ttag,
                            offset: off as u32,
                            length: n as u32,
                            last: off + n == end,
                            success: false,
                        };
                        self.encode(&Repr::H2CData(dh), &buf[off..off + n], &mut out);
                        off += n;
                    }
                    self.out = out;
                    HostEvent::R2T {
                        cid: r.cccid,
                        offset: r.offset,
                        length: r.length,
                    }
                }
                Repr::C2HTermReq(tr) => HostEvent::Terminated {
                    fes: tr.fes,
                    fei: tr.fei,
                    data,
                },
                other => {
                    return Err(Error::UnexpectedPduType {
                        pdu_type: other.pdu_type() as u8,
                    });
                }
            };
            return Ok(Some(ev));
        }
    }

    // ----------------------------------------------------- command builders

    /// Fabrics Connect. `cntlid` 0xFFFF for the admin queue (dynamic model).
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        kato_ms: u32,
        host_id: [u8; 16],
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        disable_sqflow: bool,
    ) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::fabrics(fctype::CONNECT, cid)
            .u16_at(42, qid)
            .u16_at(44, sqsize)
            .u8_at(46, if disable_sqflow { 1 << 2 } else { 0 })
            .u32_at(48, kato_ms)
            .sgl(1024, true)
            .build();
        let data = crate::admin::connect_data(&host_id, cntlid, subnqn, hostnqn);
        self.submit(sqe, Some(data), true);
        cid
    }

    pub fn property_get(&mut self, offset: u32, eight_bytes: bool) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::fabrics(fctype::PROPERTY_GET, cid)
            .u8_at(40, eight_bytes as u8)
            .u32_at(44, offset)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::fabrics(fctype::PROPERTY_SET, cid)
            .u32_at(44, offset)
            .u64_at(48, value as u64)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    /// Authentication Send (DH-HMAC-CHAP): `message` in the capsule.
    pub fn auth_send(&mut self, message: Vec<u8>) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::fabrics(0x05, cid)
            .u8_at(41, 1)
            .u8_at(42, 1)
            .u8_at(43, 0xE9)
            .u32_at(44, message.len() as u32)
            .sgl(message.len() as u32, true)
            .build();
        self.submit(sqe, Some(message), true);
        cid
    }

    /// Authentication Receive (DH-HMAC-CHAP) of up to `len` bytes.
    pub fn auth_receive(&mut self, len: u32) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::fabrics(0x06, cid)
            .u8_at(41, 1)
            .u8_at(42, 1)
            .u8_at(43, 0xE9)
            .u32_at(44, len)
            .sgl(len, false)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    /// Enables the controller the way Linux does (IOSQES 6, IOCQES 4, EN).
    pub fn enable(&mut self) -> u16 {
        self.property_set(0x14, (6 << 16) | (4 << 20) | 1)
    }

    pub fn identify(&mut self, cns: u8, nsid: u32, csi: u8) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::new(0x06, cid)
            .nsid(nsid)
            .cdw(10, cns as u32)
            .cdw(11, (csi as u32) << 24)
            .sgl(4096, false)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    /// Get Log Page of `len` bytes (a multiple of 4) at `offset`.
    pub fn get_log_page(&mut self, lid: u8, lsp: u8, len: u32, offset: u64, nsid: u32) -> u16 {
        let cid = self.next_cid();
        let numd = len / 4 - 1;
        let sqe = SqeBuilder::new(0x02, cid)
            .nsid(nsid)
            .cdw(
                10,
                lid as u32 | ((lsp as u32) << 8) | ((numd & 0xFFFF) << 16),
            )
            .cdw(11, numd >> 16)
            .cdw(12, offset as u32)
            .cdw(13, (offset >> 32) as u32)
            .sgl(len, false)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    pub fn set_features(&mut self, fid: u8, value: u32) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::new(0x09, cid)
            .cdw(10, fid as u32)
            .cdw(11, value)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    pub fn get_features(&mut self, fid: u8, sel: u8) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::new(0x0A, cid)
            .cdw(10, fid as u32 | ((sel as u32) << 8))
            .build();
        self.submit(sqe, None, false);
        cid
    }

    /// A command with no data (Keep Alive 0x18, AER 0x0C, Abort 0x08, ...).
    pub fn simple(&mut self, opcode: u8, nsid: u32) -> u16 {
        let cid = self.next_cid();
        self.submit(SqeBuilder::new(opcode, cid).nsid(nsid).build(), None, false);
        cid
    }

    pub fn read(&mut self, nsid: u32, slba: u64, blocks: u32, block_size: u32) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::new(0x02, cid)
            .nsid(nsid)
            .cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, blocks - 1)
            .sgl(blocks * block_size, false)
            .build();
        self.submit(sqe, None, false);
        cid
    }

    /// Write; the data goes in the capsule if `in_capsule`, otherwise by R2T.
    pub fn write(
        &mut self,
        nsid: u32,
        slba: u64,
        data: Vec<u8>,
        block_size: u32,
        in_capsule: bool,
    ) -> u16 {
        let cid = self.next_cid();
        let blocks = data.len() as u32 / block_size;
        let sqe = SqeBuilder::new(0x01, cid)
            .nsid(nsid)
            .cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, blocks - 1)
            .sgl(data.len() as u32, in_capsule)
            .build();
        self.submit(sqe, Some(data), in_capsule);
        cid
    }

    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, blocks: u32, deallocate: bool) -> u16 {
        let cid = self.next_cid();
        let sqe = SqeBuilder::new(0x08, cid)
            .nsid(nsid)
            .cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, (blocks - 1) | if deallocate { 1 << 25 } else { 0 })
            .build();
        self.submit(sqe, None, false);
        cid
    }

    /// Dataset Management deallocate of (slba, blocks) ranges, in the capsule.
    pub fn deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> u16 {
        let cid = self.next_cid();
        let mut data = Vec::with_capacity(ranges.len() * 16);
        for &(slba, nlb) in ranges {
            data.extend_from_slice(&0u32.to_le_bytes());
            data.extend_from_slice(&nlb.to_le_bytes());
            data.extend_from_slice(&slba.to_le_bytes());
        }
        let sqe = SqeBuilder::new(0x09, cid)
            .nsid(nsid)
            .cdw(10, ranges.len() as u32 - 1)
            .cdw(11, 1 << 2)
            .sgl(data.len() as u32, true)
            .build();
        self.submit(sqe, Some(data), true);
        cid
    }

    pub fn flush(&mut self, nsid: u32) -> u16 {
        self.simple(0x00, nsid)
    }
}

/// Parses the subsystem NQN out of a discovery log entry (1024 bytes).
pub fn discovery_entry_fields(entry: &[u8]) -> Option<(u8, String, String, String)> {
    if entry.len() < 1024 {
        return None;
    }
    let s = |b: &[u8]| {
        String::from_utf8_lossy(crate::wire::get_str(b))
            .trim_end()
            .into()
    };
    Some((
        entry[2],
        s(&entry[32..64]),
        s(&entry[256..512]),
        s(&entry[512..768]),
    ))
}
