//! Fabrics and admin commands, and the data structures they return
//! (Identify, log pages). Everything here is synchronous: a command comes in,
//! a [`Reply`] comes out.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::Instant;
use crate::config::{DISCOVERY_NQN, PortalAddress};
use crate::target::{AEC_ANA_CHANGE, Controller, SubsystemKind, Target};
use crate::wire::sqe::sgl;
use crate::wire::{Sqe, Status, get_str, le16, put_str, put16, put32, put64};

/// The result of a synchronous command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Complete now, with controller-to-host data if any.
    Complete {
        status: Status,
        result: u64,
        data: Option<Vec<u8>>,
    },
    /// An Asynchronous Event Request: keep it outstanding.
    HoldAer,
}

impl Reply {
    pub fn status(status: Status) -> Reply {
        Reply::Complete {
            status,
            result: 0,
            data: None,
        }
    }
    fn ok(result: u64) -> Reply {
        Reply::Complete {
            status: Status::SUCCESS,
            result,
            data: None,
        }
    }
    fn with_result(status: Status, result: u64) -> Reply {
        Reply::Complete {
            status,
            result,
            data: None,
        }
    }
}

/// Returns `data` to the host if the command's SGL describes exactly that much
/// controller-to-host data.
fn data_reply(sqe: &Sqe, data: Vec<u8>) -> Reply {
    if sqe.sgl_type() != sgl::TRANSPORT {
        return Reply::status(Status::SGL_TYPE_INVALID);
    }
    if sqe.sgl_length() as usize != data.len() {
        return Reply::status(Status::DATA_SGL_LENGTH_INVALID);
    }
    Reply::Complete {
        status: Status::SUCCESS,
        result: 0,
        data: Some(data),
    }
}

// Opcodes.
pub(crate) mod opcode {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
}

pub(crate) mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Connect response DW0: authentication transaction required (AUTHREQ.ATR).
pub(crate) const CONNECT_AUTHREQ_ATR: u64 = 1 << 17;

/// Controller registers reachable by Property Get/Set.
pub(crate) mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

/// NVMe version reported: 1.3.0 (what Linux nvmet reports; ANA and the
/// multipath fields are read by Linux regardless of the version).
pub const VERSION: u32 = 0x0001_0300;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
const CSTS_SHST_COMPLETE: u32 = 2 << 2;
/// Keep-alive granularity (KAS) in 100 ms units.
const KAS: u16 = 1;
/// Controller ready timeout (CAP.TO) in 500 ms units.
const CAP_TO: u64 = 15;

pub(crate) fn cap(t: &Target) -> u64 {
    let mqes = (t.config.limits.max_queue_depth - 1) as u64;
    mqes | (1 << 16) /* CQR */ | (CAP_TO << 24) | (1 << 37) /* CSS: NVM */
}

// ---------------------------------------------------------------- Connect

/// Connect command fields (SQE) and data offsets, for IPO values.
mod connect {
    pub const RECFMT: usize = 40;
    pub const QID: usize = 42;
    pub const SQSIZE: usize = 44;
    pub const CATTR: usize = 46;
    pub const KATO: usize = 48;
    pub const DATA_LEN: usize = 1024;
    pub const HOSTID: usize = 0;
    pub const CNTLID: usize = 16;
    pub const SUBNQN: usize = 256;
    pub const HOSTNQN: usize = 512;
    /// Connect attribute: SQ flow control disable.
    pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;
}

/// Result of a successful Connect: the queue the connection now is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueBinding {
    pub cntlid: u16,
    pub instance: u64,
    pub qid: u16,
    /// Queue entries (SQSIZE + 1).
    pub depth: u16,
    pub sqflow_disabled: bool,
    pub kind: SubsystemKind,
}

/// Invalid-parameter result dword: IATTR (bit 16: in data) and IPO (offset).
fn ipo(in_data: bool, offset: usize) -> u64 {
    ((in_data as u64) << 16) | offset as u64
}

pub(crate) fn connect(
    t: &mut Target,
    sqe: &Sqe,
    data: &[u8],
    now: Instant,
) -> Result<(QueueBinding, Reply), Reply> {
    if data.len() != connect::DATA_LEN || sqe.sgl_length() as usize != connect::DATA_LEN {
        return Err(Reply::status(Status::DATA_SGL_LENGTH_INVALID));
    }
    if sqe.u16_at(connect::RECFMT) != 0 {
        return Err(Reply::with_result(Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
    }
    let qid = sqe.u16_at(connect::QID);
    let sqsize = sqe.u16_at(connect::SQSIZE);
    let cattr = sqe.u8_at(connect::CATTR);
    let kato = sqe.u32_at(connect::KATO);
    let mut host_id = [0u8; 16];
    host_id.copy_from_slice(&data[connect::HOSTID..connect::HOSTID + 16]);
    let req_cntlid = le16(data, connect::CNTLID);
    let subnqn = get_str(&data[connect::SUBNQN..connect::SUBNQN + 256]);
    let hostnqn = get_str(&data[connect::HOSTNQN..connect::HOSTNQN + 256]);

    let invalid = |in_data, off| {
        Err(Reply::with_result(
            Status::CONNECT_INVALID_PARAMETERS,
            ipo(in_data, off),
        ))
    };
    let kind = if subnqn == t.config.subsystem_nqn.as_bytes() {
        SubsystemKind::Nvm
    } else if subnqn == DISCOVERY_NQN.as_bytes() {
        SubsystemKind::Discovery
    } else {
        return invalid(true, connect::SUBNQN);
    };
    let Ok(hostnqn) = core::str::from_utf8(hostnqn) else {
        return invalid(true, connect::HOSTNQN);
    };
    if hostnqn.is_empty() {
        return invalid(true, connect::HOSTNQN);
    }
    if kind == SubsystemKind::Nvm && !t.host_allowed(hostnqn) {
        log::warn!("nvme: host {hostnqn} is not allowed");
        return Err(Reply::with_result(
            Status::CONNECT_INVALID_HOST,
            ipo(true, connect::HOSTNQN),
        ));
    }
    let max_depth = t.config.limits.max_queue_depth;
    if sqsize == 0 || sqsize >= max_depth {
        return invalid(false, connect::SQSIZE);
    }
    let depth = sqsize + 1;
    let sqflow_disabled = cattr & connect::CATTR_DISABLE_SQFLOW != 0;

    if qid == 0 {
        // Dynamic controller model: the host asks for any controller.
        if req_cntlid != 0xFFFF {
            return invalid(true, connect::CNTLID);
        }
        if kind == SubsystemKind::Nvm && !t.admitting_hosts {
            log::info!(
                "nvme: host {hostnqn} asked to connect: busy (not admitting hosts yet), it retries later"
            );
            return Err(Reply::status(Status::CONNECT_CONTROLLER_BUSY_RETRY));
        }
        let Some((cntlid, instance)) =
            t.create_controller(kind, String::from(hostnqn), host_id, kato, now)
        else {
            return Err(Reply::status(Status::CONNECT_CONTROLLER_BUSY));
        };
        let b = QueueBinding {
            cntlid,
            instance,
            qid,
            depth,
            sqflow_disabled,
            kind,
        };
        return Ok((b, Reply::ok(cntlid as u64)));
    }

    // I/O queue: joins an existing controller of the same host.
    if kind == SubsystemKind::Discovery {
        return invalid(false, connect::QID);
    }
    let max_qid = t.config.limits.max_io_queues;
    let Some(c) = t.controllers.get_mut(&req_cntlid) else {
        return invalid(true, connect::CNTLID);
    };
    if c.kind != kind || c.host_nqn != hostnqn || c.host_id != host_id {
        return invalid(true, connect::CNTLID);
    }
    if qid > c.io_queues_granted.unwrap_or(max_qid) {
        return invalid(false, connect::QID);
    }
    if !c.enabled() || c.io_queues.contains(&qid) {
        return Err(Reply::status(Status::COMMAND_SEQUENCE_ERROR));
    }
    c.io_queues.push(qid);
    c.last_activity = now;
    let b = QueueBinding {
        cntlid: c.cntlid,
        instance: c.instance,
        qid,
        depth,
        sqflow_disabled,
        kind,
    };
    Ok((b, Reply::ok(c.cntlid as u64)))
}

// ------------------------------------------------------ Property Get / Set

pub(crate) fn property_get(t: &Target, c: &Controller, sqe: &Sqe) -> Reply {
    let size8 = sqe.u8_at(40) & 0x7 == 1;
    let offset = sqe.u32_at(44);
    let value = match (offset, size8) {
        (prop::CAP, true) => cap(t),
        (prop::VS, false) => VERSION as u64,
        (prop::CC, false) => c.cc as u64,
        (prop::CSTS, false) => c.csts as u64,
        _ => return Reply::status(Status::INVALID_FIELD),
    };
    Reply::ok(value)
}

pub(crate) fn property_set(c: &mut Controller, sqe: &Sqe) -> Reply {
    let size8 = sqe.u8_at(40) & 0x7 == 1;
    let offset = sqe.u32_at(44);
    if offset != prop::CC || size8 {
        return Reply::status(Status::INVALID_FIELD);
    }
    let new = sqe.u64_at(48) as u32;
    let old = c.cc;
    c.cc = new;
    let en = new & 1 != 0;
    if en && old & 1 == 0 {
        // IOSQES must be 6 (64 B), IOCQES 4 (16 B), MPS 0 (4 KiB), CSS NVM.
        let iosqes = (new >> 16) & 0xF;
        let iocqes = (new >> 20) & 0xF;
        let mps = (new >> 7) & 0xF;
        let css = (new >> 4) & 0x7;
        if iosqes != 6 || iocqes != 4 || mps != 0 || css != 0 {
            c.csts = CSTS_CFS;
        } else {
            c.csts = CSTS_RDY;
        }
    } else if !en && old & 1 != 0 {
        c.csts &= !(CSTS_RDY | CSTS_CFS);
    }
    // Shutdown notification: there is nothing to write back, so it completes at once.
    if (new >> 14) & 0x3 != 0 {
        c.csts |= CSTS_SHST_COMPLETE;
    } else {
        c.csts &= !CSTS_SHST_COMPLETE;
    }
    Reply::ok(0)
}

// ----------------------------------------------------------- Admin commands

/// Handles an admin command for an enabled controller. `aers` is the number
/// of AERs already outstanding on this admin queue.
pub(crate) fn admin_command(
    t: &mut Target,
    cntlid: u16,
    instance: u64,
    sqe: &Sqe,
    aers: usize,
) -> Reply {
    let opcode = sqe.opcode();
    let Some(c) = t.controller(cntlid, instance) else {
        return Reply::status(Status::INTERNAL_ERROR);
    };
    let discovery = c.kind == SubsystemKind::Discovery;
    match opcode {
        opcode::IDENTIFY => identify(t, cntlid, instance, sqe),
        opcode::GET_LOG_PAGE => get_log_page(t, cntlid, instance, sqe),
        opcode::SET_FEATURES => set_features(t, cntlid, instance, sqe),
        opcode::GET_FEATURES => get_features(t, cntlid, instance, sqe),
        opcode::KEEP_ALIVE => Reply::ok(0),
        opcode::ASYNC_EVENT_REQUEST => {
            let c = t.controller_mut(cntlid, instance).expect("checked above");
            if let Some(aen) = c.pending_aens.pop_front() {
                Reply::ok(aen as u64)
            } else if aers >= t.config.limits.max_aers as usize {
                Reply::status(Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED)
            } else {
                Reply::HoldAer
            }
        }
        // Abort is mandatory; nothing is ever aborted (DW0 bit 0 = not aborted).
        opcode::ABORT if !discovery => Reply::ok(1),
        _ => Reply::status(Status::INVALID_OPCODE),
    }
}

// ----------------------------------------------------------------- Identify

mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    pub const CSI_NAMESPACE: u8 = 0x05;
    pub const CSI_CONTROLLER: u8 = 0x06;
    pub const CSI_ACTIVE_NS_LIST: u8 = 0x07;
    pub const NAMESPACE_CS_INDEPENDENT: u8 = 0x08;
}

const CSI_NVM: u8 = 0;
const IDENTIFY_LEN: usize = 4096;

fn identify(t: &Target, cntlid: u16, instance: u64, sqe: &Sqe) -> Reply {
    let Some(c) = t.controller(cntlid, instance) else {
        return Reply::status(Status::INTERNAL_ERROR);
    };
    let cns = (sqe.cdw(10) & 0xFF) as u8;
    let csi = (sqe.cdw(11) >> 24) as u8;
    let nsid = sqe.nsid();
    let nn = t.config.limits.max_namespaces;
    let discovery = c.kind == SubsystemKind::Discovery;
    let data = match cns {
        cns::CONTROLLER => identify_controller(t, c),
        cns::CSI_CONTROLLER if csi == CSI_NVM => vec![0u8; IDENTIFY_LEN],
        _ if discovery => return Reply::status(Status::INVALID_FIELD),
        cns::NAMESPACE | cns::NAMESPACE_CS_INDEPENDENT | cns::CSI_NAMESPACE => {
            if cns == cns::CSI_NAMESPACE && csi != CSI_NVM {
                return Reply::status(Status::INVALID_FIELD);
            }
            if nsid == 0 || nsid > nn {
                return Reply::status(Status::INVALID_NAMESPACE);
            }
            match t.namespace(nsid) {
                // Inactive NSIDs return a zeroed structure (NCAP 0: not attached).
                None => vec![0u8; IDENTIFY_LEN],
                Some(_) if cns == cns::CSI_NAMESPACE => vec![0u8; IDENTIFY_LEN],
                Some(ns) if cns == cns::NAMESPACE => identify_namespace(t, ns),
                Some(ns) => identify_namespace_cs_independent(t, ns),
            }
        }
        cns::ACTIVE_NS_LIST | cns::CSI_ACTIVE_NS_LIST => {
            if cns == cns::CSI_ACTIVE_NS_LIST && csi != CSI_NVM {
                return Reply::status(Status::INVALID_FIELD);
            }
            if nsid >= 0xFFFF_FFFE {
                return Reply::status(Status::INVALID_NAMESPACE);
            }
            let mut ids: Vec<u32> = t
                .config
                .namespaces
                .iter()
                .map(|n| n.nsid)
                .filter(|&n| n > nsid)
                .collect();
            ids.sort_unstable();
            let mut d = vec![0u8; IDENTIFY_LEN];
            for (i, id) in ids.iter().take(IDENTIFY_LEN / 4).enumerate() {
                put32(&mut d, i * 4, *id);
            }
            d
        }
        cns::NS_ID_DESCRIPTORS => {
            let Some(ns) = t.namespace(nsid) else {
                return Reply::status(Status::INVALID_NAMESPACE);
            };
            let mut d = vec![0u8; IDENTIFY_LEN];
            let mut at = 0;
            for (nidt, id) in [
                (2u8, &ns.nguid[..]),
                (3u8, &ns.uuid[..]),
                (4u8, &[CSI_NVM][..]),
            ] {
                d[at] = nidt;
                d[at + 1] = id.len() as u8;
                d[at + 4..at + 4 + id.len()].copy_from_slice(id);
                at += 4 + id.len();
            }
            d
        }
        _ => return Reply::status(Status::INVALID_FIELD),
    };
    data_reply(sqe, data)
}

fn ascii_field(dst: &mut [u8], s: &str) {
    put_str(dst, s.as_bytes(), b' ');
}

/// CTRATT bit 6: Traffic Based Keep Alive Support.
pub(crate) const CTRATT_TBKAS: u32 = 1 << 6;

pub(crate) fn identify_controller(t: &Target, c: &Controller) -> Vec<u8> {
    let cfg = &t.config;
    let l = &cfg.limits;
    let discovery = c.kind == SubsystemKind::Discovery;
    let mut d = vec![0u8; IDENTIFY_LEN];
    ascii_field(&mut d[4..24], &cfg.serial);
    ascii_field(&mut d[24..64], &cfg.model);
    ascii_field(&mut d[64..72], &cfg.firmware_revision);
    d[72] = 6; // RAB
    // MDTS in units of the minimum page size (4 KiB), as a power of two.
    d[77] = (l.max_data_transfer / 4096).trailing_zeros() as u8;
    put16(&mut d, 78, c.cntlid);
    put32(&mut d, 80, VERSION);
    if discovery {
        d[111] = 2; // CNTRLTYPE: discovery
    } else {
        d[76] = 0x01 | 0x02 | 0x08; // CMIC: multi-port, multi-controller, ANA
        put32(&mut d, 92, AEC_ANA_CHANGE); // OAES
        // CTRATT: Traffic Based Keep Alive. Commands and completions restart
        // the timer, so a host that sees completions sends no Keep Alive.
        // Besides sparing a command, this keeps a failover quick: Linux
        // (6.1) sends its Keep Alive synchronously and its error recovery
        // waits for it, so one sent to a node that just died holds the
        // host's commands back for a whole KATO; with I/O flowing until the
        // crash, the next one is due a full Keep Alive period later.
        put32(&mut d, 96, CTRATT_TBKAS);
        d[111] = 1; // CNTRLTYPE: I/O
    }
    d[258] = 3; // ACL
    d[259] = l.max_aers - 1; // AERL (0's based)
    if !discovery {
        d[260] = 0x01 | (1 << 1); // FRMW: slot 1 read-only, 1 slot
        d[261] = (1 << 1) | (1 << 2); // LPA: commands effects log, extended data
    } else {
        d[261] = 1 << 2;
    }
    d[262] = 0; // ELPE: 1 error log entry
    put16(&mut d, 266, 343); // WCTEMP (K)
    put16(&mut d, 268, 373); // CCTEMP (K)
    put16(&mut d, 320, KAS);
    if !discovery {
        d[342] = l.ana_transition_time; // ANATT
        // ANACAP: reports optimized, non-optimized, inaccessible, persistent loss, change.
        d[343] = 0x1F;
        let grpmax = t.ana_group_max();
        put32(&mut d, 344, grpmax); // ANAGRPMAX
        put32(&mut d, 348, grpmax); // NANAGRPID
    }
    d[512] = 0x66; // SQES
    d[513] = 0x44; // CQES
    put16(&mut d, 514, l.max_queue_depth); // MAXCMD
    if !discovery {
        put32(&mut d, 516, l.max_namespaces); // NN
        put16(&mut d, 520, (1 << 2) | (1 << 3)); // ONCS: DSM, Write Zeroes
        if cfg.volatile_write_cache {
            // VWC present; Flush with NSID FFFFFFFFh not supported (bits 2:1 = 10b).
            d[525] = 0x01 | (0x2 << 1);
        }
        put32(&mut d, 540, l.max_namespaces); // MNAN
    }
    // SGLS: SGLs supported (no alignment), offset addressing for in-capsule data.
    put32(&mut d, 536, 1 | (1 << 20));
    let subnqn = if discovery {
        DISCOVERY_NQN
    } else {
        cfg.subsystem_nqn.as_str()
    };
    put_str(&mut d[768..1024], subnqn.as_bytes(), 0);
    put32(&mut d, 1792, (64 + l.in_capsule_data) / 16); // IOCCSZ
    put32(&mut d, 1796, 1); // IORCSZ
    put16(&mut d, 1800, 0); // ICDOFF
    d[1802] = 0; // FCATT: dynamic controller model
    d[1803] = 1; // MSDBD
    d
}

fn identify_namespace(t: &Target, ns: &crate::config::NamespaceConfig) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    put64(&mut d, 0, ns.blocks); // NSZE
    put64(&mut d, 8, ns.blocks); // NCAP
    put64(&mut d, 16, ns.blocks); // NUSE
    d[25] = 0; // NLBAF: one format
    d[26] = 0; // FLBAS: format 0
    d[30] = 1; // NMIC: may be shared by controllers (multipath)
    put32(&mut d, 92, ns.ana_group); // ANAGRPID
    d[104..120].copy_from_slice(&ns.nguid);
    // LBAF0: no metadata, LBADS, relative performance best.
    put32(&mut d, 128, (ns.lba_shift as u32) << 16);
    let _ = t;
    d
}

fn identify_namespace_cs_independent(_t: &Target, ns: &crate::config::NamespaceConfig) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    d[1] = 1; // NMIC shared
    put32(&mut d, 4, ns.ana_group);
    d[14] = 1; // NSTAT: namespace ready
    d
}

// ------------------------------------------------------------- Log pages

mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMAND_EFFECTS: u8 = 0x05;
    pub const ANA: u8 = 0x0C;
    pub const DISCOVERY: u8 = 0x70;
}

fn get_log_page(t: &mut Target, cntlid: u16, instance: u64, sqe: &Sqe) -> Reply {
    let Some(c) = t.controller(cntlid, instance) else {
        return Reply::status(Status::INTERNAL_ERROR);
    };
    let cdw10 = sqe.cdw(10);
    let cdw11 = sqe.cdw(11);
    let lid = (cdw10 & 0xFF) as u8;
    let lsp = ((cdw10 >> 8) & 0x7F) as u8;
    let rae = cdw10 & (1 << 15) != 0;
    let numd = (((cdw11 & 0xFFFF) as u64) << 16 | (cdw10 >> 16) as u64) + 1;
    let len = numd * 4;
    let offset = (sqe.cdw(13) as u64) << 32 | sqe.cdw(12) as u64;
    if len > t.config.limits.max_data_transfer as u64 || !offset.is_multiple_of(4) {
        return Reply::status(Status::INVALID_FIELD);
    }
    let discovery = c.kind == SubsystemKind::Discovery;
    let log = match (discovery, lid) {
        (true, lid::DISCOVERY) => discovery_log(t, &c.host_nqn),
        (false, lid::ERROR) => vec![0u8; 64],
        (false, lid::SMART) => smart_log(t),
        (false, lid::FIRMWARE_SLOT) => {
            let mut d = vec![0u8; 512];
            d[0] = 1; // AFI: slot 1 active
            ascii_field(&mut d[8..16], &t.config.firmware_revision);
            d
        }
        (false, lid::CHANGED_NS_LIST) => vec![0u8; 4096],
        (false, lid::COMMAND_EFFECTS) => effects_log(),
        (false, lid::ANA) => {
            let mut log = ana_log(t, lsp & 1 != 0);
            // Hosts size the ANA log from Identify (header + NANAGRPID
            // descriptors + MNAN namespace IDs) and may read it in pieces
            // at offsets (nvme-cli reads 4 KiB at a time): everything past
            // the present content up to that size reads as zeros.
            log.resize(log.len().max(ana_log_max_len(t)), 0);
            if !rae && let Some(c) = t.controller_mut(cntlid, instance) {
                c.ana_aen_masked = false;
            }
            log
        }
        _ => return Reply::status(Status::INVALID_LOG_PAGE),
    };
    if offset > log.len() as u64 {
        return Reply::status(Status::INVALID_FIELD);
    }
    let mut out = vec![0u8; len as usize];
    let avail = &log[offset as usize..];
    let n = avail.len().min(out.len());
    out[..n].copy_from_slice(&avail[..n]);
    data_reply(sqe, out)
}

fn smart_log(t: &Target) -> Vec<u8> {
    let s = t.stats;
    let mut d = vec![0u8; 512];
    put16(&mut d, 1, 273 + 30); // composite temperature, K
    d[3] = 100; // available spare
    d[4] = 10; // threshold
    let units = |bytes: u64| (bytes / 512).div_ceil(1000);
    put64(&mut d, 32, units(s.bytes_read));
    put64(&mut d, 48, units(s.bytes_written));
    put64(&mut d, 64, s.read_commands);
    put64(&mut d, 80, s.write_commands);
    d
}

fn effects_log() -> Vec<u8> {
    const CSUPP: u32 = 1;
    const LBCC: u32 = 1 << 1;
    let mut d = vec![0u8; 4096];
    for op in [0x02u8, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18] {
        put32(&mut d, op as usize * 4, CSUPP);
    }
    for (op, e) in [
        (0x00u8, CSUPP),
        (0x01, CSUPP | LBCC),
        (0x02, CSUPP),
        (0x08, CSUPP | LBCC),
        (0x09, CSUPP | LBCC),
    ] {
        put32(&mut d, 1024 + op as usize * 4, e);
    }
    d
}

/// The largest ANA log a host may expect, from what Identify Controller
/// reports: the header, NANAGRPID group descriptors and MNAN namespace IDs.
fn ana_log_max_len(t: &Target) -> usize {
    16 + t.ana_group_max() as usize * 32 + t.config.limits.max_namespaces as usize * 4
}

/// The ANA log: header, then one descriptor per group with its namespaces
/// (none if `groups_only`).
pub(crate) fn ana_log(t: &Target, groups_only: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(16 + t.ana_groups.len() * 32 + t.config.namespaces.len() * 4);
    d.extend_from_slice(&t.ana_change_count.to_le_bytes());
    d.extend_from_slice(&(t.ana_groups.len() as u16).to_le_bytes());
    d.extend_from_slice(&[0u8; 6]);
    for g in &t.ana_groups {
        let mut nsids: Vec<u32> = if groups_only {
            Vec::new()
        } else {
            t.config
                .namespaces
                .iter()
                .filter(|n| n.ana_group == g.id)
                .map(|n| n.nsid)
                .collect()
        };
        nsids.sort_unstable();
        d.extend_from_slice(&g.id.to_le_bytes());
        d.extend_from_slice(&(nsids.len() as u32).to_le_bytes());
        d.extend_from_slice(&g.change_count.to_le_bytes());
        d.push(g.state as u8);
        d.extend_from_slice(&[0u8; 15]);
        for n in nsids {
            d.extend_from_slice(&n.to_le_bytes());
        }
    }
    d
}

/// The discovery log: one entry per portal (this node's and the peer's) for
/// the NVM subsystem, if the host may use it.
pub(crate) fn discovery_log(t: &Target, host_nqn: &str) -> Vec<u8> {
    let cfg = &t.config;
    let portals: Vec<_> = if t.host_allowed(host_nqn) {
        cfg.portals.iter().chain(cfg.peer_portals.iter()).collect()
    } else {
        Vec::new()
    };
    let mut d = vec![0u8; 1024 * (1 + portals.len())];
    put64(&mut d, 0, t.discovery_generation);
    put64(&mut d, 8, portals.len() as u64);
    put16(&mut d, 16, 0); // RECFMT
    for (i, p) in portals.iter().enumerate() {
        let e = &mut d[1024 * (i + 1)..1024 * (i + 2)];
        e[0] = 3; // TRTYPE: TCP
        e[1] = match p.address {
            PortalAddress::V4(_) => 1,
            PortalAddress::V6(_) => 2,
        };
        e[2] = 2; // SUBTYPE: NVM subsystem
        // TREQ: secure channel not specified; SQ flow control disable supported.
        e[3] = 1 << 2;
        put16(e, 4, p.port_id);
        put16(e, 6, 0xFFFF); // CNTLID: dynamic
        put16(e, 8, 32); // ASQSZ
        let svc = format!("{}", p.port);
        put_str(&mut e[32..64], svc.as_bytes(), b' ');
        put_str(&mut e[256..512], cfg.subsystem_nqn.as_bytes(), 0);
        let addr = format_address(p.address);
        put_str(&mut e[512..768], addr.as_bytes(), b' ');
        e[768] = 0; // TSAS: SECTYPE none
    }
    d
}

fn format_address(a: PortalAddress) -> String {
    match a {
        PortalAddress::V4(b) => format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]),
        PortalAddress::V6(b) => {
            let mut s = String::new();
            for i in 0..8 {
                if i > 0 {
                    s.push(':');
                }
                s.push_str(&format!(
                    "{:x}",
                    u16::from_be_bytes([b[2 * i], b[2 * i + 1]])
                ));
            }
            s
        }
    }
}

// -------------------------------------------------------------- Features

mod fid {
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

fn set_features(t: &mut Target, cntlid: u16, instance: u64, sqe: &Sqe) -> Reply {
    let max_q = t.config.limits.max_io_queues;
    let vwc = t.config.volatile_write_cache;
    let Some(c) = t.controller_mut(cntlid, instance) else {
        return Reply::status(Status::INTERNAL_ERROR);
    };
    let discovery = c.kind == SubsystemKind::Discovery;
    let cdw10 = sqe.cdw(10);
    let cdw11 = sqe.cdw(11);
    let fid = (cdw10 & 0xFF) as u8;
    let save = cdw10 & (1 << 31) != 0;
    let known = matches!(fid, fid::ASYNC_EVENT_CONFIG | fid::KEEP_ALIVE_TIMER)
        || (!discovery && fid == fid::NUMBER_OF_QUEUES)
        || (!discovery && vwc && fid == fid::VOLATILE_WRITE_CACHE);
    if !known {
        return Reply::status(Status::INVALID_FIELD);
    }
    if save {
        return Reply::status(Status::FEATURE_NOT_SAVEABLE);
    }
    match fid {
        fid::NUMBER_OF_QUEUES => {
            let nsqr = cdw11 & 0xFFFF;
            let ncqr = cdw11 >> 16;
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Reply::status(Status::INVALID_FIELD);
            }
            if !c.io_queues.is_empty() {
                return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
            }
            // Submission and completion queues are paired in NVMe/TCP: grant
            // the same number of both.
            let granted = ((nsqr.min(ncqr) + 1) as u16).min(max_q);
            c.io_queues_granted = Some(granted);
            let g = (granted - 1) as u64;
            Reply::ok(g | g << 16)
        }
        fid::ASYNC_EVENT_CONFIG => {
            let supported = if discovery { 0 } else { AEC_ANA_CHANGE };
            c.async_event_config = cdw11 & supported;
            Reply::ok(0)
        }
        fid::KEEP_ALIVE_TIMER => {
            c.kato_ms = cdw11;
            Reply::ok(0)
        }
        fid::VOLATILE_WRITE_CACHE => {
            c.write_cache_enabled = cdw11 & 1 != 0;
            Reply::ok(0)
        }
        _ => Reply::status(Status::INVALID_FIELD),
    }
}

fn get_features(t: &Target, cntlid: u16, instance: u64, sqe: &Sqe) -> Reply {
    let Some(c) = t.controller(cntlid, instance) else {
        return Reply::status(Status::INTERNAL_ERROR);
    };
    let discovery = c.kind == SubsystemKind::Discovery;
    let cdw10 = sqe.cdw(10);
    let fid = (cdw10 & 0xFF) as u8;
    let sel = (cdw10 >> 8) & 0x7;
    let vwc = t.config.volatile_write_cache;
    let max_q = t.config.limits.max_io_queues as u64 - 1;
    let known = matches!(fid, fid::ASYNC_EVENT_CONFIG | fid::KEEP_ALIVE_TIMER)
        || (!discovery && fid == fid::NUMBER_OF_QUEUES)
        || (!discovery && vwc && fid == fid::VOLATILE_WRITE_CACHE);
    if !known {
        return Reply::status(Status::INVALID_FIELD);
    }
    let current = sel == 0;
    let value = match sel {
        // Current, default, saved (= default: nothing is saveable).
        0..=2 => match fid {
            fid::NUMBER_OF_QUEUES => {
                let g = match (current, c.io_queues_granted) {
                    (true, Some(g)) => g as u64 - 1,
                    _ => max_q,
                };
                g | g << 16
            }
            fid::ASYNC_EVENT_CONFIG if current => c.async_event_config as u64,
            fid::KEEP_ALIVE_TIMER if current => c.kato_ms as u64,
            fid::VOLATILE_WRITE_CACHE if current => c.write_cache_enabled as u64,
            // Defaults: no events, no keep-alive, write cache on.
            fid::VOLATILE_WRITE_CACHE => 1,
            _ => 0,
        },
        // Supported capabilities: changeable, not saveable, not per namespace.
        3 => 1 << 2,
        _ => return Reply::status(Status::INVALID_FIELD),
    };
    Reply::ok(value)
}

/// Builds Connect command data (used by the host side).
#[cfg(any(test, feature = "host"))]
pub(crate) fn connect_data(
    host_id: &[u8; 16],
    cntlid: u16,
    subnqn: &str,
    hostnqn: &str,
) -> Vec<u8> {
    let mut d = vec![0u8; connect::DATA_LEN];
    d[..16].copy_from_slice(host_id);
    put16(&mut d, connect::CNTLID, cntlid);
    put_str(
        &mut d[connect::SUBNQN..connect::SUBNQN + 256],
        subnqn.as_bytes(),
        0,
    );
    put_str(
        &mut d[connect::HOSTNQN..connect::HOSTNQN + 256],
        hostnqn.as_bytes(),
        0,
    );
    d
}
