//! One NVMe/TCP connection: one NVMe queue (admin or I/O) of one controller.
//!
//! Bytes from the socket go into [`Connection::receive`] split anywhere; the
//! connection parses PDUs as they complete, streaming data straight into the
//! buffer it will hand to the block layer (one copy, socket to buffer). Bytes
//! for the socket come out of [`Connection::output`] /
//! [`Connection::write_output`]; read data is sent from the very buffer the
//! block layer filled.
//!
//! Memory is bounded whatever the peer sends: headers are gathered in a fixed
//! array; in-capsule data is at most the advertised in-capsule size; write data
//! solicited by R2T and read data waiting to be sent share a per-connection
//! budget (commands wait for room); a host that submits more commands than its
//! queue has entries is not read from until responses drain.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::Instant;
use crate::admin::{self, QueueBinding, Reply, fctype};
use crate::block::{BlockError, BlockOp, BlockOutcome, BlockRequest, RequestId};
use crate::digest::Crc32c;
use crate::error::Error;
use crate::io::{self, IoPlan};
use crate::target::{RemovalReason, SubsystemKind, Target};
use crate::wire::pdu::{
    DIGEST_DATA, DIGEST_HEADER, MAX_HEADER_LEN, MAX_TERM_DATA_LEN, PFV_1_0, offsets,
};
use crate::wire::sqe::OPCODE_FABRICS;
use crate::wire::{Completion, DataHeader, IcReq, IcResp, R2t, Repr, Sqe, Status, TermReq};

/// Lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Waiting for the host's ICReq.
    AwaitingIcReq,
    /// Initialized; commands flow.
    Open,
    /// A fatal error: a C2HTermReq (or a last response) is queued. Input is
    /// ignored; close the socket once the output is drained.
    Closing,
    /// Close the socket now.
    Closed,
}

/// Per-queue counters for the console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub commands: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    pub errors: u64,
    pub r2ts: u64,
    pub pdus_in: u64,
    /// Data bytes this crate copied from `receive` input into command
    /// buffers (write data, in-capsule data): one copy, socket to block buffer.
    pub bytes_copied_in: u64,
    /// Bytes copied by [`Connection::write_output`] (zero when the caller
    /// sends from [`Connection::output`] directly).
    pub bytes_copied_out: u64,
}

/// What the console shows about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub state: ConnectionState,
    pub cntlid: Option<u16>,
    pub qid: Option<u16>,
    pub subsystem: Option<SubsystemKind>,
    pub depth: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    pub outstanding: usize,
    pub stats: QueueStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Capsule,
    H2C { cid: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Gathering a PDU header into `hdr`.
    Header,
    /// A command capsule header is complete but the queue is full: wait.
    Stalled { sqe: [u8; 64], data_len: usize },
    Data {
        remaining: usize,
        dest: Dest,
        crc: u32,
    },
    DataDigest {
        dest: Dest,
        crc: u32,
        have: u8,
        buf: [u8; 4],
    },
}

#[derive(Debug)]
enum CmdState {
    /// Waiting for room in the data budget (reads; writes before their R2T).
    AwaitBudget(IoPlan),
    /// R2T sent; H2CData being received into `buf`.
    AwaitData {
        plan: IoPlan,
        buf: Vec<u8>,
        expected: u32,
        budget: u32,
        digest_error: bool,
    },
    /// Handed to the block layer.
    Block { id: u64, plan: IoPlan, budget: u32 },
    /// An Asynchronous Event Request held until an event happens.
    Aer,
}

#[derive(Debug)]
struct Command {
    sqe: [u8; 64],
    state: CmdState,
}

const INLINE_LEN: usize = 28;

#[derive(Debug)]
enum Chunk {
    Inline { buf: [u8; INLINE_LEN], len: u8 },
    Heap(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Inline { buf, len } => &buf[..*len as usize],
            Chunk::Heap(v) => v,
        }
    }
}

#[derive(Debug)]
struct OutItem {
    chunk: Chunk,
    /// Draining this item completes a command's response.
    response: bool,
    /// Data budget released when this item is drained.
    budget: u32,
    /// Part of a block command's answer (see [`Connection::output_may_wait`]).
    answer: bool,
}

/// Queue depth assumed before Connect (only Connect is accepted then).
const UNBOUND_DEPTH: usize = 4;

/// One NVMe/TCP connection.
#[derive(Debug)]
pub struct Connection {
    state: ConnectionState,
    created: Instant,
    crc: Crc32c,
    data_budget: u32,
    total_data_budget: u64,
    data_in_use: Arc<AtomicU64>,
    hdgst: bool,
    ddgst: bool,
    rx: Rx,
    hdr: [u8; MAX_HEADER_LEN + 4],
    hdr_have: usize,
    hdr_need: usize,
    capsule_sqe: [u8; 64],
    capsule_data: Vec<u8>,
    binding: Option<QueueBinding>,
    released: bool,
    sq_head: u16,
    commands: BTreeMap<u16, Command>,
    aers: VecDeque<u16>,
    waiting: VecDeque<u16>,
    budget_used: u32,
    inflight: BTreeMap<u64, u16>,
    next_request: u64,
    block_queue: VecDeque<BlockRequest>,
    out: VecDeque<OutItem>,
    out_pos: usize,
    responses_queued: usize,
    stats: QueueStats,
    error: Option<Error>,
    /// In-band authentication of this queue, when its host must authenticate.
    auth: Option<QueueAuthState>,
}

/// A queue whose host must authenticate: which `dhchap_hosts` entry, the
/// transaction, and since when (it must finish within the handshake timeout).
#[derive(Debug)]
struct QueueAuthState {
    host: usize,
    transaction: crate::auth::QueueAuth,
    since: Instant,
    /// A failure was already reported on the console.
    reported: bool,
}

/// Largest Authentication Receive allocation length served (a Challenge with
/// ffdhe8192 and SHA-512 is 1104 bytes; Linux asks for 4096).
const MAX_AUTH_RECEIVE: u32 = 16 * 1024;

impl Connection {
    /// A new connection to `target`, accepted at `now`.
    pub fn new(target: &Target, now: Instant) -> Self {
        Connection {
            state: ConnectionState::AwaitingIcReq,
            created: now,
            crc: target.crc,
            data_budget: target.config.limits.data_budget,
            total_data_budget: target.config.limits.total_data_budget,
            data_in_use: target.data_in_use.clone(),
            hdgst: false,
            ddgst: false,
            rx: Rx::Header,
            hdr: [0; MAX_HEADER_LEN + 4],
            hdr_have: 0,
            hdr_need: 8,
            capsule_sqe: [0; 64],
            capsule_data: Vec::new(),
            binding: None,
            released: false,
            sq_head: 0,
            commands: BTreeMap::new(),
            aers: VecDeque::new(),
            waiting: VecDeque::new(),
            budget_used: 0,
            inflight: BTreeMap::new(),
            next_request: 1,
            block_queue: VecDeque::new(),
            out: VecDeque::new(),
            out_pos: 0,
            responses_queued: 0,
            stats: QueueStats::default(),
            error: None,
            auth: None,
        }
    }

    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// Why the connection is closing or closed, if it is.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Whether the caller should close the socket now (and then call [`Connection::close`]).
    pub fn wants_close(&self) -> bool {
        match self.state {
            ConnectionState::Closed => true,
            ConnectionState::Closing => self.out.is_empty(),
            _ => false,
        }
    }

    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            state: self.state,
            cntlid: self.binding.map(|b| b.cntlid),
            qid: self.binding.map(|b| b.qid),
            subsystem: self.binding.map(|b| b.kind),
            depth: self.binding.map(|b| b.depth).unwrap_or(0),
            header_digest: self.hdgst,
            data_digest: self.ddgst,
            outstanding: self.outstanding(),
            stats: self.stats,
        }
    }

    // ------------------------------------------------------------ input

    /// Feeds bytes received from the socket. Returns how many were consumed;
    /// the rest must be offered again later (the queue is full: a host
    /// submitted more commands than its queue has entries). After a fatal
    /// error all bytes are consumed and dropped.
    pub fn receive(&mut self, t: &mut Target, now: Instant, data: &[u8]) -> usize {
        let total = data.len();
        let mut data = data;
        if self.is_open() {
            self.check_controller(t);
        }
        if self.is_open() {
            self.try_resume(t, now);
        }
        while !data.is_empty() && self.is_open() {
            match self.rx {
                Rx::Stalled { .. } => break,
                Rx::Header => {
                    let need = self.hdr_need;
                    let n = (need - self.hdr_have).min(data.len());
                    self.hdr[self.hdr_have..self.hdr_have + n].copy_from_slice(&data[..n]);
                    self.hdr_have += n;
                    data = &data[n..];
                    if self.hdr_have < need {
                        break;
                    }
                    if need == 8 && self.hdr_have == 8 {
                        match Repr::check_common(&self.hdr[..8]) {
                            Ok((_, header_len)) => self.hdr_need = header_len,
                            Err(e) => {
                                self.fatal(t, e);
                                break;
                            }
                        }
                        continue;
                    }
                    self.on_header(t, now);
                }
                Rx::Data {
                    remaining,
                    dest,
                    crc,
                } => {
                    let n = remaining.min(data.len());
                    let chunk = &data[..n];
                    data = &data[n..];
                    let crc = if self.ddgst {
                        self.crc.update(crc, chunk)
                    } else {
                        crc
                    };
                    self.stats.bytes_copied_in += n as u64;
                    match dest {
                        Dest::Capsule => self.capsule_data.extend_from_slice(chunk),
                        Dest::H2C { cid } => {
                            if let Some(Command {
                                state: CmdState::AwaitData { buf, .. },
                                ..
                            }) = self.commands.get_mut(&cid)
                            {
                                buf.extend_from_slice(chunk);
                            }
                        }
                    }
                    let remaining = remaining - n;
                    if remaining > 0 {
                        self.rx = Rx::Data {
                            remaining,
                            dest,
                            crc,
                        };
                    } else if self.ddgst {
                        self.rx = Rx::DataDigest {
                            dest,
                            crc,
                            have: 0,
                            buf: [0; 4],
                        };
                    } else {
                        self.rx = Rx::Header;
                        self.finish_data(t, now, dest, true);
                    }
                }
                Rx::DataDigest {
                    dest,
                    crc,
                    mut have,
                    mut buf,
                } => {
                    let n = (4 - have as usize).min(data.len());
                    buf[have as usize..have as usize + n].copy_from_slice(&data[..n]);
                    have += n as u8;
                    data = &data[n..];
                    if have < 4 {
                        self.rx = Rx::DataDigest {
                            dest,
                            crc,
                            have,
                            buf,
                        };
                    } else {
                        self.rx = Rx::Header;
                        let ok = u32::from_le_bytes(buf) == Crc32c::finish(crc);
                        if !ok {
                            log::warn!("nvme: data digest mismatch");
                        }
                        self.finish_data(t, now, dest, ok);
                    }
                }
            }
        }
        if self.is_open() {
            total - data.len()
        } else {
            total
        }
    }

    fn is_open(&self) -> bool {
        matches!(
            self.state,
            ConnectionState::AwaitingIcReq | ConnectionState::Open
        )
    }

    fn on_header(&mut self, t: &mut Target, now: Instant) {
        self.stats.pdus_in += 1;
        let header_len = self.hdr_need;
        let parsed = Repr::parse(&self.hdr[..header_len], &self.crc);
        let (repr, layout) = match parsed {
            Ok(x) => x,
            Err(e) => return self.fatal(t, e),
        };
        if let Repr::H2CTermReq(tr) = repr {
            log::warn!(
                "nvme: host terminated the connection: FES {:#x} FEI {:#x}",
                tr.fes,
                tr.fei
            );
            self.error = Some(Error::PeerTerminated { fes: tr.fes });
            self.shut(t, ConnectionState::Closed);
            return;
        }
        if self.state == ConnectionState::AwaitingIcReq {
            return match repr {
                Repr::IcReq(ic) => {
                    self.on_icreq(t, ic);
                    self.reset_header();
                }
                _ => self.fatal(t, Error::PduSequence),
            };
        }
        match repr {
            Repr::IcReq(_) => return self.fatal(t, Error::PduSequence),
            Repr::CapsuleCmd(_) | Repr::H2CData(_) => {}
            other => {
                return self.fatal(
                    t,
                    Error::UnexpectedPduType {
                        pdu_type: other.pdu_type() as u8,
                    },
                );
            }
        }
        if layout.header_digest != self.hdgst
            || layout.data_digest != (self.ddgst && layout.data_len > 0)
        {
            return self.fatal(
                t,
                Error::InvalidHeaderField {
                    offset: offsets::FLAGS,
                },
            );
        }
        if layout.data_len > 0 && layout.data_offset != layout.header_len {
            // CPDA is 0: data follows the header with no padding.
            return self.fatal(
                t,
                Error::InvalidHeaderField {
                    offset: offsets::PDO,
                },
            );
        }
        match repr {
            Repr::CapsuleCmd(sqe) => {
                let limit = self.in_capsule_limit(t);
                if layout.data_len > limit {
                    return self.fatal(
                        t,
                        Error::DataLimitExceeded {
                            length: layout.data_len as u32,
                            limit: limit as u32,
                        },
                    );
                }
                self.reset_header();
                if self.outstanding() >= self.depth() {
                    self.rx = Rx::Stalled {
                        sqe,
                        data_len: layout.data_len,
                    };
                } else {
                    self.start_capsule(t, now, sqe, layout.data_len);
                }
            }
            Repr::H2CData(d) => {
                if let Err(e) = self.check_h2c(t, &d) {
                    return self.fatal(t, e);
                }
                self.reset_header();
                self.rx = Rx::Data {
                    remaining: d.length as usize,
                    dest: Dest::H2C { cid: d.cccid },
                    crc: Crc32c::INIT,
                };
            }
            _ => {}
        }
    }

    fn reset_header(&mut self) {
        self.hdr_have = 0;
        self.hdr_need = 8;
    }

    fn in_capsule_limit(&self, t: &Target) -> usize {
        let l = t.config.limits.in_capsule_data as usize;
        match self.binding {
            Some(b) if b.qid != 0 => l,
            // Admin queue (and Connect) capsules: Linux sends up to 8 KiB inline.
            _ => l.max(8192),
        }
    }

    fn check_h2c(&self, t: &Target, d: &DataHeader) -> Result<(), Error> {
        let Some(Command {
            state: CmdState::AwaitData { buf, expected, .. },
            ..
        }) = self.commands.get(&d.ttag)
        else {
            return Err(Error::InvalidHeaderField {
                offset: offsets::TTAG,
            });
        };
        if d.cccid != d.ttag {
            return Err(Error::InvalidHeaderField {
                offset: offsets::CCCID,
            });
        }
        let limit = t.config.limits.max_h2c_data;
        if d.length > limit {
            return Err(Error::DataLimitExceeded {
                length: d.length,
                limit,
            });
        }
        let end = d.offset as u64 + d.length as u64;
        if d.offset as usize != buf.len() || end > *expected as u64 {
            return Err(Error::DataOutOfRange);
        }
        if d.last && end != *expected as u64 {
            return Err(Error::InvalidHeaderField {
                offset: offsets::FLAGS,
            });
        }
        Ok(())
    }

    fn on_icreq(&mut self, t: &mut Target, ic: IcReq) {
        if ic.pfv != PFV_1_0 {
            return self.fatal(
                t,
                Error::UnsupportedParameter {
                    offset: offsets::PFV,
                },
            );
        }
        // Data is always placed right after the header: only HPDA 0 (no alignment).
        if ic.hpda != 0 {
            return self.fatal(
                t,
                Error::UnsupportedParameter {
                    offset: offsets::HPDA,
                },
            );
        }
        if ic.digest & !(DIGEST_HEADER | DIGEST_DATA) != 0 {
            return self.fatal(
                t,
                Error::UnsupportedParameter {
                    offset: offsets::DGST,
                },
            );
        }
        self.hdgst = ic.digest & DIGEST_HEADER != 0 && t.config.allow_header_digest;
        self.ddgst = ic.digest & DIGEST_DATA != 0 && t.config.allow_data_digest;
        let resp = IcResp {
            pfv: PFV_1_0,
            cpda: 0,
            digest: (self.hdgst as u8 * DIGEST_HEADER) | (self.ddgst as u8 * DIGEST_DATA),
            maxh2cdata: t.config.limits.max_h2c_data,
        };
        let mut buf = alloc::vec![0u8; 128];
        Repr::IcResp(resp).emit(&mut buf, 0, false, false, &self.crc);
        self.push(Chunk::Heap(buf), false, 0);
        self.state = ConnectionState::Open;
    }

    fn start_capsule(&mut self, t: &mut Target, now: Instant, sqe: [u8; 64], data_len: usize) {
        if data_len > 0 {
            self.capsule_sqe = sqe;
            self.capsule_data = Vec::with_capacity(data_len);
            self.rx = Rx::Data {
                remaining: data_len,
                dest: Dest::Capsule,
                crc: Crc32c::INIT,
            };
        } else {
            self.rx = Rx::Header;
            self.on_command(t, now, sqe, Vec::new(), true);
        }
    }

    fn finish_data(&mut self, t: &mut Target, now: Instant, dest: Dest, digest_ok: bool) {
        match dest {
            Dest::Capsule => {
                let data = core::mem::take(&mut self.capsule_data);
                let sqe = self.capsule_sqe;
                self.on_command(t, now, sqe, data, digest_ok);
            }
            Dest::H2C { cid } => {
                let done = match self.commands.get_mut(&cid) {
                    Some(Command {
                        state:
                            CmdState::AwaitData {
                                buf,
                                expected,
                                digest_error,
                                ..
                            },
                        ..
                    }) => {
                        *digest_error |= !digest_ok;
                        buf.len() == *expected as usize
                    }
                    _ => false,
                };
                if done {
                    self.data_complete(t, cid);
                }
            }
        }
    }

    fn try_resume(&mut self, t: &mut Target, now: Instant) {
        if let Rx::Stalled { sqe, data_len } = self.rx
            && self.outstanding() < self.depth()
        {
            self.rx = Rx::Header;
            self.start_capsule(t, now, sqe, data_len);
        }
    }

    fn outstanding(&self) -> usize {
        self.commands.len() + self.responses_queued
    }

    fn depth(&self) -> usize {
        self.binding
            .map(|b| b.depth as usize)
            .unwrap_or(UNBOUND_DEPTH)
    }

    // --------------------------------------------------------- commands

    fn on_command(
        &mut self,
        t: &mut Target,
        now: Instant,
        sqe: [u8; 64],
        data: Vec<u8>,
        digest_ok: bool,
    ) {
        let s = Sqe(&sqe);
        let cid = s.cid();
        self.stats.commands += 1;
        if let Some(b) = self.binding {
            self.sq_head = (self.sq_head + 1) % b.depth;
            match t.controller_mut(b.cntlid, b.instance) {
                Some(c) => c.last_activity = now,
                None => return self.controller_gone(),
            }
        }
        if self.commands.contains_key(&cid) {
            return self.respond(cid, Status::COMMAND_ID_CONFLICT, 0);
        }
        if !digest_ok {
            return self.respond(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
        }
        let Some(b) = self.binding else {
            if s.opcode() == OPCODE_FABRICS && s.fctype() == fctype::CONNECT {
                return self.on_connect(t, now, &s, &data);
            }
            return self.respond(cid, Status::COMMAND_SEQUENCE_ERROR, 0);
        };
        let is_auth_command = s.opcode() == OPCODE_FABRICS
            && matches!(s.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECEIVE);
        if is_auth_command {
            return self.on_auth_command(t, b, &s, &data);
        }
        if self
            .auth
            .as_ref()
            .is_some_and(|a| !a.transaction.authenticated())
        {
            // Until the host has authenticated on this queue, every other
            // command is aborted (NVMe Base 2.0 §8.13.4).
            return self.respond(cid, Status::AUTHENTICATION_REQUIRED, 0);
        }
        if s.opcode() == OPCODE_FABRICS {
            return self.on_fabrics(t, b, &s);
        }
        let enabled = t
            .controller(b.cntlid, b.instance)
            .is_some_and(|c| c.enabled());
        if !enabled {
            return self.respond(cid, Status::COMMAND_SEQUENCE_ERROR, 0);
        }
        if b.qid == 0 {
            if !data.is_empty() {
                return self.respond(cid, Status::DATA_SGL_LENGTH_INVALID, 0);
            }
            let reply = admin::admin_command(t, b.cntlid, b.instance, &s, self.aers.len());
            match reply {
                Reply::HoldAer => {
                    self.commands.insert(
                        cid,
                        Command {
                            sqe,
                            state: CmdState::Aer,
                        },
                    );
                    self.aers.push_back(cid);
                }
                Reply::Complete {
                    status,
                    result,
                    data,
                } => self.reply(cid, status, result, data),
            }
            // A Get Log Page may have unmasked events; an AER may be waiting for one.
            self.deliver_aens(t);
            return;
        }
        self.on_io(t, sqe, data);
    }

    fn on_connect(&mut self, t: &mut Target, now: Instant, s: &Sqe, data: &[u8]) {
        let cid = s.cid();
        match admin::connect(t, s, data, now) {
            Ok((b, reply)) => {
                self.binding = Some(b);
                self.sq_head = 1 % b.depth;
                let host = match (b.kind, t.controller(b.cntlid, b.instance)) {
                    (SubsystemKind::Nvm, Some(c)) => t.dhchap_host(&c.host_nqn),
                    _ => None,
                };
                if let Some(host) = host {
                    self.auth = Some(QueueAuthState {
                        host,
                        transaction: crate::auth::QueueAuth::new(),
                        since: now,
                        reported: false,
                    });
                }
                if let Reply::Complete {
                    status,
                    mut result,
                    data,
                } = reply
                {
                    if host.is_some() {
                        result |= admin::CONNECT_AUTHREQ_ATR;
                    }
                    self.reply(cid, status, result, data);
                }
            }
            Err(Reply::Complete {
                status,
                result,
                data,
            }) => self.reply(cid, status, result, data),
            Err(Reply::HoldAer) => {}
        }
    }

    fn on_fabrics(&mut self, t: &mut Target, b: QueueBinding, s: &Sqe) {
        let cid = s.cid();
        let reply = match s.fctype() {
            fctype::CONNECT => Reply::status(Status::COMMAND_SEQUENCE_ERROR),
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if b.qid != 0 => {
                Reply::status(Status::INVALID_FIELD)
            }
            fctype::PROPERTY_GET => match t.controller(b.cntlid, b.instance) {
                Some(c) => admin::property_get(t, c, s),
                None => return self.controller_gone(),
            },
            fctype::PROPERTY_SET => match t.controller_mut(b.cntlid, b.instance) {
                Some(c) => admin::property_set(c, s),
                None => return self.controller_gone(),
            },
            fctype::DISCONNECT => {
                if b.qid == 0 || s.u16_at(40) != 0 {
                    Reply::status(Status::INVALID_FIELD)
                } else {
                    // Respond, then close once the response is out.
                    self.reply(cid, Status::SUCCESS, 0, None);
                    self.release(t);
                    self.state = ConnectionState::Closing;
                    self.drop_work();
                    return;
                }
            }
            _ => Reply::status(Status::INVALID_OPCODE),
        };
        if let Reply::Complete {
            status,
            result,
            data,
        } = reply
        {
            self.reply(cid, status, result, data);
        }
    }

    /// Authentication Send / Receive (DH-HMAC-CHAP, NVMe Base 2.0 §6.2–6.3).
    fn on_auth_command(&mut self, t: &mut Target, b: QueueBinding, s: &Sqe, data: &[u8]) {
        let cid = s.cid();
        let Some(auth) = self.auth.as_mut() else {
            // This host is not configured to authenticate.
            return self.respond(cid, Status::INVALID_OPCODE, 0);
        };
        // SECP, SPSP1, SPSP0 (bytes 43, 42, 41), TL / AL (DW11).
        if s.u8_at(43) != crate::auth::SECP_DHCHAP || s.u8_at(42) != 1 || s.u8_at(41) != 1 {
            return self.respond(cid, Status::INVALID_FIELD, 0);
        }
        let length = s.u32_at(44);
        let Some(host) = t.config.dhchap_hosts.get(auth.host) else {
            return self.respond(cid, Status::INTERNAL_ERROR, 0);
        };
        let ctx = crate::auth::AuthContext {
            host,
            subsys_nqn: &t.config.subsystem_nqn,
            prefs: &t.config.dhchap_preferences,
        };
        let outcome = if s.fctype() == fctype::AUTH_SEND {
            if length == 0 || length as usize != data.len() {
                return self.respond(cid, Status::INVALID_FIELD, 0);
            }
            let outcome = auth.transaction.on_send(data, &ctx);
            self.respond(cid, Status::SUCCESS, 0);
            outcome
        } else {
            if length == 0 || length > MAX_AUTH_RECEIVE {
                return self.respond(cid, Status::INVALID_FIELD, 0);
            }
            let (mut message, outcome) = auth.transaction.on_receive(&ctx, &mut t.random);
            // The whole allocation length is transferred, zero-padded.
            message.resize(length as usize, 0);
            self.reply(cid, Status::SUCCESS, 0, Some(message));
            outcome
        };
        let host_nqn = host.host_nqn.clone();
        match outcome {
            crate::auth::AuthOutcome::Continue => {}
            crate::auth::AuthOutcome::Authenticated {
                hash,
                group,
                bidirectional,
            } => {
                t.stats.authentications += 1;
                log::info!(
                    "nvme: host {host_nqn} authenticated on queue {} of controller {} (DH-HMAC-CHAP {} {}{})",
                    b.qid,
                    b.cntlid,
                    hash.name(),
                    group.name(),
                    if bidirectional { ", bidirectional" } else { "" }
                );
            }
            crate::auth::AuthOutcome::Failed(why) => {
                t.stats.authentication_failures += 1;
                if let Some(a) = self.auth.as_mut() {
                    a.reported = true;
                }
                log::warn!(
                    "nvme: host {host_nqn} failed authentication on queue {} of controller {}: {why}",
                    b.qid,
                    b.cntlid
                );
                // The answer goes out, then the queue (and with the admin
                // queue, the controller) is gone: never a connection.
                self.release(t);
                self.state = ConnectionState::Closing;
                self.drop_work();
            }
        }
    }

    fn on_io(&mut self, t: &mut Target, sqe: [u8; 64], data: Vec<u8>) {
        let s = Sqe(&sqe);
        let cid = s.cid();
        let plan = match io::plan(t, &s, data.len()) {
            Ok(p) => p,
            Err(status) => return self.respond(cid, status, 0),
        };
        match plan {
            IoPlan::Read { .. } => {
                self.commands.insert(
                    cid,
                    Command {
                        sqe,
                        state: CmdState::AwaitBudget(plan),
                    },
                );
                self.waiting.push_back(cid);
                self.start_waiting();
            }
            IoPlan::DatasetManagement {
                deallocate: false, ..
            } => {
                // Only attributes (hints) and no deallocation: nothing to do.
                self.respond(cid, Status::SUCCESS, 0)
            }
            IoPlan::Write { .. } | IoPlan::DatasetManagement { .. } => {
                if data.is_empty() {
                    self.commands.insert(
                        cid,
                        Command {
                            sqe,
                            state: CmdState::AwaitBudget(plan),
                        },
                    );
                    self.waiting.push_back(cid);
                    self.start_waiting();
                } else {
                    self.execute_with_data(t, sqe, plan, data, 0);
                }
            }
            IoPlan::Flush { nsid } => {
                self.stats.flushes += 1;
                self.issue(sqe, plan, nsid, BlockOp::Flush, 0)
            }
            IoPlan::WriteZeroes {
                nsid,
                offset,
                len,
                deallocate,
            } => self.issue(
                sqe,
                plan,
                nsid,
                BlockOp::WriteZeroes {
                    offset,
                    len,
                    deallocate,
                },
                0,
            ),
        }
    }

    /// Starts commands waiting for data budget, in order.
    fn start_waiting(&mut self) {
        if !self.is_open() {
            return;
        }
        let limit = self.data_budget;
        while let Some(&cid) = self.waiting.front() {
            let Some(cmd) = self.commands.get(&cid) else {
                self.waiting.pop_front();
                continue;
            };
            let CmdState::AwaitBudget(plan) = cmd.state else {
                self.waiting.pop_front();
                continue;
            };
            let need = match plan {
                IoPlan::Read { len, .. } => len,
                other => other.data_out_len(),
            };
            let total = self.data_in_use.load(Ordering::Relaxed);
            if self.budget_used + need > limit || total + need as u64 > self.total_data_budget {
                break;
            }
            self.waiting.pop_front();
            self.budget_used += need;
            self.data_in_use.fetch_add(need as u64, Ordering::Relaxed);
            let sqe = cmd.sqe;
            match plan {
                IoPlan::Read { nsid, offset, len } => {
                    self.issue(sqe, plan, nsid, BlockOp::Read { offset, len }, need);
                }
                _ => {
                    self.commands.insert(
                        cid,
                        Command {
                            sqe,
                            state: CmdState::AwaitData {
                                plan,
                                buf: Vec::with_capacity(need as usize),
                                expected: need,
                                budget: need,
                                digest_error: false,
                            },
                        },
                    );
                    self.stats.r2ts += 1;
                    let r2t = Repr::R2T(R2t {
                        cccid: cid,
                        ttag: cid,
                        offset: 0,
                        length: need,
                    });
                    self.push_header(&r2t, 0, false, 0);
                }
            }
        }
    }

    /// All H2CData of a command arrived.
    fn data_complete(&mut self, t: &mut Target, cid: u16) {
        let Some(cmd) = self.commands.remove(&cid) else {
            return;
        };
        let CmdState::AwaitData {
            plan,
            buf,
            budget,
            digest_error,
            ..
        } = cmd.state
        else {
            self.commands.insert(cid, cmd);
            return;
        };
        if digest_error {
            self.release_budget(budget);
            return self.respond(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
        }
        self.execute_with_data(t, cmd.sqe, plan, buf, budget);
    }

    fn execute_with_data(
        &mut self,
        t: &mut Target,
        sqe: [u8; 64],
        plan: IoPlan,
        data: Vec<u8>,
        budget: u32,
    ) {
        let cid = Sqe(&sqe).cid();
        match plan {
            IoPlan::Write {
                nsid, offset, fua, ..
            } => {
                let cache_on = self
                    .binding
                    .and_then(|b| t.controller(b.cntlid, b.instance))
                    .is_some_and(|c| c.write_cache_enabled);
                let force_unit_access = fua || (t.config.volatile_write_cache && !cache_on);
                self.issue(
                    sqe,
                    plan,
                    nsid,
                    BlockOp::Write {
                        offset,
                        data,
                        force_unit_access,
                    },
                    budget,
                );
            }
            IoPlan::DatasetManagement {
                nsid,
                ranges,
                lba_shift,
                blocks,
                ..
            } => {
                let parsed = io::dsm_ranges(&data, ranges, lba_shift, blocks);
                self.release_budget(budget);
                match parsed {
                    Err(status) => self.respond(cid, status, 0),
                    Ok(r) if r.is_empty() => self.respond(cid, Status::SUCCESS, 0),
                    Ok(ranges) => self.issue(sqe, plan, nsid, BlockOp::Deallocate { ranges }, 0),
                }
            }
            _ => {
                self.release_budget(budget);
                self.respond(cid, Status::INTERNAL_ERROR, 0)
            }
        }
    }

    fn issue(&mut self, sqe: [u8; 64], plan: IoPlan, nsid: u32, op: BlockOp, budget: u32) {
        let cid = Sqe(&sqe).cid();
        let id = self.next_request;
        self.next_request += 1;
        self.inflight.insert(id, cid);
        self.commands.insert(
            cid,
            Command {
                sqe,
                state: CmdState::Block { id, plan, budget },
            },
        );
        self.block_queue.push_back(BlockRequest {
            id: RequestId(id),
            nsid,
            op,
        });
    }

    /// The next block request to execute, if any.
    pub fn next_block_request(&mut self) -> Option<BlockRequest> {
        self.block_queue.pop_front()
    }

    /// Reports the outcome of a block request (any order).
    pub fn complete_block(
        &mut self,
        t: &mut Target,
        now: Instant,
        id: RequestId,
        outcome: BlockOutcome,
    ) -> Result<(), Error> {
        let cid = self
            .inflight
            .remove(&id.0)
            .ok_or(Error::UnknownBlockRequest(id.0))?;
        if !self.is_open() {
            return Ok(());
        }
        let (sqe, plan, budget) = match self.commands.remove(&cid) {
            Some(Command {
                sqe,
                state:
                    CmdState::Block {
                        id: i,
                        plan,
                        budget,
                    },
            }) if i == id.0 => (sqe, plan, budget),
            Some(other) => {
                self.commands.insert(cid, other);
                return Err(Error::UnknownBlockRequest(id.0));
            }
            None => return Err(Error::UnknownBlockRequest(id.0)),
        };
        let _ = sqe;
        let first_item = self.out.len();
        self.answer_block_command(t, cid, plan, budget, outcome);
        // Only the answer: what the completion lets resume (an R2T) is not.
        for item in self.out.iter_mut().skip(first_item) {
            item.answer = true;
        }
        self.after_completion(t, now);
        Ok(())
    }

    /// Queues the answer to a block command the block layer completed.
    fn answer_block_command(
        &mut self,
        t: &mut Target,
        cid: u16,
        plan: IoPlan,
        budget: u32,
        outcome: BlockOutcome,
    ) {
        let status = match (plan, outcome) {
            (IoPlan::Read { len, .. }, BlockOutcome::ReadData(data))
                if data.len() == len as usize =>
            {
                self.stats.reads += 1;
                self.stats.bytes_read += len as u64;
                t.stats.read_commands += 1;
                t.stats.bytes_read += len as u64;
                self.send_read_data(cid, data, budget);
                return;
            }
            (_, BlockOutcome::Failed(e)) => match (e, plan) {
                (BlockError::Media, IoPlan::Read { .. }) => Status::UNRECOVERED_READ_ERROR,
                (BlockError::Media, _) => Status::WRITE_FAULT,
                (BlockError::NotReady, _) => Status::NAMESPACE_NOT_READY,
                (BlockError::AnaInaccessible, _) => Status::ANA_INACCESSIBLE,
                (BlockError::AnaTransition, _) => Status::ANA_TRANSITION,
                (BlockError::Internal, _) => Status::INTERNAL_ERROR,
            },
            (IoPlan::Read { .. }, _) => Status::INTERNAL_ERROR,
            (_, BlockOutcome::ReadData(_)) => Status::INTERNAL_ERROR,
            (p, BlockOutcome::Done) => {
                if let IoPlan::Write { len, .. } = p {
                    self.stats.writes += 1;
                    self.stats.bytes_written += len as u64;
                    t.stats.write_commands += 1;
                    t.stats.bytes_written += len as u64;
                }
                Status::SUCCESS
            }
        };
        self.release_budget(budget);
        self.respond(cid, status, 0);
    }

    fn after_completion(&mut self, t: &mut Target, now: Instant) {
        // Traffic-based keep-alive (CTRATT.TBKAS): a completion restarts the
        // timer as a command does; the host counts completions as traffic
        // and sends no Keep Alive while they come.
        if let Some(b) = self.binding
            && let Some(c) = t.controller_mut(b.cntlid, b.instance)
        {
            c.last_activity = now;
        }
        self.start_waiting();
        self.try_resume(t, now);
    }

    fn release_budget(&mut self, budget: u32) {
        let budget = budget.min(self.budget_used);
        self.budget_used -= budget;
        self.data_in_use.fetch_sub(budget as u64, Ordering::Relaxed);
    }

    // ----------------------------------------------------------- output

    fn push(&mut self, chunk: Chunk, response: bool, budget: u32) {
        self.out.push_back(OutItem {
            chunk,
            response,
            budget,
            answer: false,
        });
    }

    fn push_header(&mut self, repr: &Repr, data_len: usize, response: bool, budget: u32) {
        let mut buf = [0u8; INLINE_LEN];
        let n = repr.emit(&mut buf, data_len, self.hdgst, self.ddgst, &self.crc);
        self.push(Chunk::Inline { buf, len: n as u8 }, response, budget);
    }

    fn respond(&mut self, cid: u16, status: Status, result: u64) {
        if !status.is_success() {
            self.stats.errors += 1;
        }
        let cqe = Completion {
            result,
            sq_head: self.sq_head,
            sq_id: self.binding.map(|b| b.qid).unwrap_or(0),
            cid,
            status,
        };
        self.responses_queued += 1;
        self.push_header(&Repr::CapsuleResp(cqe.to_bytes()), 0, true, 0);
    }

    fn reply(&mut self, cid: u16, status: Status, result: u64, data: Option<Vec<u8>>) {
        match data {
            Some(d) if status.is_success() && !d.is_empty() => {
                self.send_data(cid, d, 0, false);
                self.respond(cid, status, result);
            }
            _ => self.respond(cid, status, result),
        }
    }

    fn send_read_data(&mut self, cid: u16, data: Vec<u8>, budget: u32) {
        // With SQ flow control disabled the host needs no SQHD: the last
        // C2HData can carry SUCCESS and the response capsule is skipped.
        let success = self.binding.is_some_and(|b| b.sqflow_disabled);
        self.send_data(cid, data, budget, success);
        if !success {
            self.respond(cid, Status::SUCCESS, 0);
        }
    }

    fn send_data(&mut self, cid: u16, data: Vec<u8>, budget: u32, success: bool) {
        let len = data.len();
        let dh = DataHeader {
            cccid: cid,
            ttag: 0,
            offset: 0,
            length: len as u32,
            last: true,
            success,
        };
        self.push_header(&Repr::C2HData(dh), len, false, 0);
        if success {
            self.responses_queued += 1;
        }
        if self.ddgst {
            let digest = self.crc.checksum(&data);
            self.push(Chunk::Heap(data), false, budget);
            let mut buf = [0u8; INLINE_LEN];
            buf[..4].copy_from_slice(&digest.to_le_bytes());
            self.push(Chunk::Inline { buf, len: 4 }, success, 0);
        } else {
            self.push(Chunk::Heap(data), success, budget);
        }
    }

    /// Whether bytes are waiting to be sent.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes waiting to be sent (not yet taken by [`Connection::consume_output`]).
    pub fn output_len(&self) -> usize {
        self.out
            .iter()
            .map(|item| item.chunk.bytes().len())
            .sum::<usize>()
            - self.out_pos
    }

    /// The next contiguous bytes to send (empty if none). Call
    /// [`Connection::consume_output`] with how many the socket took.
    pub fn output(&self) -> &[u8] {
        match self.out.front() {
            Some(item) => &item.chunk.bytes()[self.out_pos..],
            None => &[],
        }
    }

    /// True if the output may wait for more answers before it is sent, so
    /// that several leave in one frame (the host then handles, and
    /// acknowledges, one frame for them): it holds only answers to block
    /// commands, fewer than `max_answers` and `max_bytes`, while other reads
    /// and writes are still with the block layer, whose completions bring
    /// more soon. Anything else in the output (an R2T the host waits for, an
    /// admin answer) never waits, nor does the last command's answer, nor an
    /// answer behind a Flush, Write Zeroes or Deallocate (which may take
    /// long). The caller bounds the wait in time as well.
    pub fn output_may_wait(&self, max_answers: usize, max_bytes: usize) -> bool {
        if self.out.is_empty() || self.inflight.is_empty() {
            return false;
        }
        let (mut answers, mut bytes) = (0, 0);
        for item in &self.out {
            answers += usize::from(item.response);
            bytes += item.chunk.bytes().len();
            if !item.answer || answers >= max_answers || bytes - self.out_pos >= max_bytes {
                return false;
            }
        }
        self.inflight.values().all(|cid| {
            matches!(
                self.commands.get(cid).map(|c| &c.state),
                Some(CmdState::Block {
                    plan: IoPlan::Read { .. } | IoPlan::Write { .. },
                    ..
                })
            )
        })
    }

    /// Marks `n` bytes of [`Connection::output`] as sent.
    pub fn consume_output(&mut self, mut n: usize) {
        while n > 0 {
            let Some(item) = self.out.front() else { return };
            let left = item.chunk.bytes().len() - self.out_pos;
            if n < left {
                self.out_pos += n;
                return;
            }
            n -= left;
            self.out_pos = 0;
            let item = self.out.pop_front().expect("front exists");
            if item.response {
                self.responses_queued = self.responses_queued.saturating_sub(1);
            }
            if item.budget > 0 {
                self.release_budget(item.budget);
                self.start_waiting();
            }
        }
    }

    /// Copies as much output as fits into `dst` and marks it sent.
    pub fn write_output(&mut self, dst: &mut [u8]) -> usize {
        let mut written = 0;
        while written < dst.len() {
            let src = self.output();
            if src.is_empty() {
                break;
            }
            let n = src.len().min(dst.len() - written);
            dst[written..written + n].copy_from_slice(&src[..n]);
            written += n;
            self.stats.bytes_copied_out += n as u64;
            self.consume_output(n);
        }
        written
    }

    // ------------------------------------------------------ timers, events

    /// Runs timers and deferred work: keep-alive expiry of this connection's
    /// controller, the handshake timeout, commands waiting for budget or queue
    /// room, and pending async events. Call it regularly (see
    /// [`Connection::next_deadline`]) and after [`Target::set_ana_state`].
    pub fn poll(&mut self, t: &mut Target, now: Instant) {
        if !self.is_open() {
            return;
        }
        match self.binding {
            Some(b) => {
                if let Some(a) = &self.auth
                    && !a.transaction.authenticated()
                    && now >= a.since.add_millis(t.config.limits.handshake_timeout_ms)
                {
                    self.report_unauthenticated(
                        t,
                        "no authentication within the handshake timeout",
                    );
                    self.error = Some(Error::ConnectionClosed);
                    return self.shut(t, ConnectionState::Closing);
                }
                if t.expire_if_silent(b.cntlid, b.instance, now) {
                    self.report_unauthenticated(
                        t,
                        "the controller expired before the host authenticated",
                    );
                    log::info!(
                        "nvme: queue {} of controller {} closed: controller gone",
                        b.qid,
                        b.cntlid
                    );
                    return self.controller_gone();
                }
            }
            None => {
                let deadline = self
                    .created
                    .add_millis(t.config.limits.handshake_timeout_ms);
                if now >= deadline {
                    log::info!("nvme: connection closed: no Connect within the handshake timeout");
                    self.error = Some(Error::ConnectionClosed);
                    return self.shut(t, ConnectionState::Closed);
                }
            }
        }
        self.start_waiting();
        self.try_resume(t, now);
        self.deliver_aens(t);
    }

    /// When [`Connection::poll`] next has timer work to do.
    pub fn next_deadline(&self, t: &Target) -> Option<Instant> {
        if !self.is_open() {
            return None;
        }
        match self.binding {
            Some(b) => {
                let kato = t
                    .controller(b.cntlid, b.instance)
                    .filter(|c| c.kato_ms != 0)
                    .map(|c| c.last_activity.add_millis(c.kato_ms as u64 + 1));
                let auth = self
                    .auth
                    .as_ref()
                    .filter(|a| !a.transaction.authenticated())
                    .map(|a| a.since.add_millis(t.config.limits.handshake_timeout_ms));
                match (kato, auth) {
                    (Some(k), Some(a)) => Some(k.min(a)),
                    (k, a) => k.or(a),
                }
            }
            None => Some(
                self.created
                    .add_millis(t.config.limits.handshake_timeout_ms),
            ),
        }
    }

    fn deliver_aens(&mut self, t: &mut Target) {
        let Some(b) = self.binding else { return };
        if b.qid != 0 {
            return;
        }
        while !self.aers.is_empty() {
            let Some(c) = t.controller_mut(b.cntlid, b.instance) else {
                return;
            };
            let Some(aen) = c.pending_aens.pop_front() else {
                return;
            };
            let cid = self.aers.pop_front().expect("not empty");
            self.commands.remove(&cid);
            self.respond(cid, Status::SUCCESS, aen as u64);
        }
    }

    fn check_controller(&mut self, t: &Target) {
        if let Some(b) = self.binding
            && t.controller(b.cntlid, b.instance).is_none()
        {
            self.controller_gone();
        }
    }

    // ---------------------------------------------------------- closing

    /// The socket is closed (by the peer or after [`Connection::wants_close`]):
    /// frees the queue and, for an admin queue, its controller. Block requests
    /// still executing may be completed or not; their results are ignored.
    pub fn close(&mut self, t: &mut Target) {
        self.shut(t, ConnectionState::Closed);
    }

    fn controller_gone(&mut self) {
        self.released = true;
        self.error.get_or_insert(Error::ConnectionClosed);
        self.state = ConnectionState::Closed;
        self.drop_work();
        self.out.clear();
        self.out_pos = 0;
    }

    fn fatal(&mut self, t: &mut Target, e: Error) {
        log::warn!("nvme: fatal transport error: {e}");
        if let Some((fes, fei)) = e.termination() {
            let header = &self.hdr[..self.hdr_have.min(MAX_TERM_DATA_LEN)];
            let mut buf = alloc::vec![0u8; 24 + header.len()];
            let repr = Repr::C2HTermReq(TermReq {
                fes: fes as u16,
                fei,
            });
            let n = repr.emit(&mut buf, header.len(), false, false, &self.crc);
            buf[n..].copy_from_slice(header);
            // Pending responses are dropped: the host resets the queue anyway.
            self.out.clear();
            self.out_pos = 0;
            self.push(Chunk::Heap(buf), false, 0);
        }
        self.error = Some(e);
        self.shut(t, ConnectionState::Closing);
    }

    fn shut(&mut self, t: &mut Target, state: ConnectionState) {
        self.report_unauthenticated(
            t,
            "the queue ended before the host authenticated (no secret?)",
        );
        self.release(t);
        self.drop_work();
        self.state = state;
        if state == ConnectionState::Closed {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// A queue that ends before its host authenticated is a failed
    /// authentication too (e.g. a host without the secret, which gives up
    /// without sending anything): one console line.
    fn report_unauthenticated(&mut self, t: &mut Target, why: &str) {
        let Some(a) = self.auth.as_mut() else { return };
        if a.reported || a.transaction.authenticated() || self.released {
            return;
        }
        a.reported = true;
        t.stats.authentication_failures += 1;
        let host = t
            .config
            .dhchap_hosts
            .get(a.host)
            .map_or("?", |h| h.host_nqn.as_str());
        if let Some(b) = self.binding {
            log::warn!(
                "nvme: host {host} failed authentication on queue {} of controller {}: {why}",
                b.qid,
                b.cntlid
            );
        }
    }

    fn drop_work(&mut self) {
        self.commands.clear();
        self.aers.clear();
        self.waiting.clear();
        self.block_queue.clear();
        self.capsule_data = Vec::new();
        self.data_in_use
            .fetch_sub(self.budget_used as u64, Ordering::Relaxed);
        self.budget_used = 0;
        self.responses_queued = 0;
    }

    fn release(&mut self, t: &mut Target) {
        if self.released {
            return;
        }
        self.released = true;
        let Some(b) = self.binding else { return };
        if b.qid == 0 {
            if t.controller(b.cntlid, b.instance).is_some() {
                t.remove_controller(b.cntlid, RemovalReason::AdminQueueClosed);
            }
        } else if let Some(c) = t.controller_mut(b.cntlid, b.instance) {
            c.io_queues.retain(|&q| q != b.qid);
        }
    }
}

impl Drop for Connection {
    /// A connection dropped without [`Connection::close`] still gives its
    /// share of the target-wide data budget back.
    fn drop(&mut self) {
        self.data_in_use
            .fetch_sub(self.budget_used as u64, Ordering::Relaxed);
    }
}
