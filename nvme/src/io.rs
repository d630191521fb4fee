//! NVM command set I/O commands: validation and mapping onto block operations.

use alloc::vec::Vec;

use crate::block::ByteRange;
use crate::config::AnaState;
use crate::target::Target;
use crate::wire::sqe::sgl;
use crate::wire::{Sqe, Status, le32, le64};

pub(crate) mod opcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// A validated I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoPlan {
    Read {
        nsid: u32,
        offset: u64,
        len: u32,
    },
    /// Write data of `len` bytes is to be received (in the capsule or by R2T).
    Write {
        nsid: u32,
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush {
        nsid: u32,
    },
    WriteZeroes {
        nsid: u32,
        offset: u64,
        len: u64,
        deallocate: bool,
    },
    /// Dataset Management: `ranges` range descriptors (16 bytes each) are to
    /// be received; `deallocate` tells whether anything is to be done.
    DatasetManagement {
        nsid: u32,
        ranges: u32,
        deallocate: bool,
        lba_shift: u8,
        blocks: u64,
    },
}

impl IoPlan {
    /// Bytes of host-to-controller data the command carries.
    pub fn data_out_len(&self) -> u32 {
        match *self {
            IoPlan::Write { len, .. } => len,
            IoPlan::DatasetManagement { ranges, .. } => ranges * 16,
            _ => 0,
        }
    }
}

fn ana_status(state: AnaState) -> Option<Status> {
    match state {
        AnaState::Optimized | AnaState::NonOptimized => None,
        AnaState::Inaccessible => Some(Status::ANA_INACCESSIBLE),
        AnaState::PersistentLoss => Some(Status::ANA_PERSISTENT_LOSS),
        AnaState::Change => Some(Status::ANA_TRANSITION),
    }
}

/// Validates an I/O command against the namespace, ANA state and limits.
/// `capsule_data` is the number of in-capsule data bytes that came with it.
pub(crate) fn plan(t: &Target, sqe: &Sqe, capsule_data: usize) -> Result<IoPlan, Status> {
    let op = sqe.opcode();
    if !matches!(
        op,
        opcode::FLUSH
            | opcode::WRITE
            | opcode::READ
            | opcode::WRITE_ZEROES
            | opcode::DATASET_MANAGEMENT
    ) {
        return Err(Status::INVALID_OPCODE);
    }
    let nsid = sqe.nsid();
    let ns = t.namespace(nsid).ok_or(Status::INVALID_NAMESPACE)?;
    if let Some(s) = ana_status(t.namespace_ana_state(ns)) {
        return Err(s);
    }
    if !t.namespace_ready(nsid) {
        return Err(Status::NAMESPACE_NOT_READY);
    }
    let shift = ns.lba_shift;
    let mdts = t.config.limits.max_data_transfer as u64;
    let range = |slba: u64, nlb: u64| -> Result<(), Status> {
        match slba.checked_add(nlb) {
            Some(end) if end <= ns.blocks => Ok(()),
            _ => Err(Status::LBA_OUT_OF_RANGE),
        }
    };
    let slba = (sqe.cdw(11) as u64) << 32 | sqe.cdw(10) as u64;
    let nlb = (sqe.cdw(12) & 0xFFFF) as u64 + 1;
    let sgl_len = sqe.sgl_length() as u64;
    let sgl_type = sqe.sgl_type();
    let plan = match op {
        opcode::READ | opcode::WRITE => {
            range(slba, nlb)?;
            let len = nlb << shift;
            if len > mdts {
                return Err(Status::INVALID_FIELD);
            }
            if sgl_len != len {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            let offset = slba << shift;
            if op == opcode::READ {
                if sgl_type != sgl::TRANSPORT || capsule_data != 0 {
                    return Err(Status::SGL_TYPE_INVALID);
                }
                IoPlan::Read {
                    nsid,
                    offset,
                    len: len as u32,
                }
            } else {
                let fua = sqe.cdw(12) & (1 << 30) != 0;
                IoPlan::Write {
                    nsid,
                    offset,
                    len: len as u32,
                    fua,
                }
            }
        }
        opcode::FLUSH => IoPlan::Flush { nsid },
        opcode::WRITE_ZEROES => {
            range(slba, nlb)?;
            let deallocate = sqe.cdw(12) & (1 << 25) != 0;
            IoPlan::WriteZeroes {
                nsid,
                offset: slba << shift,
                len: nlb << shift,
                deallocate,
            }
        }
        _ => {
            let ranges = (sqe.cdw(10) & 0xFF) + 1;
            let deallocate = sqe.cdw(11) & (1 << 2) != 0;
            if sgl_len < ranges as u64 * 16 || sgl_len > 4096 {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            IoPlan::DatasetManagement {
                nsid,
                ranges,
                deallocate,
                lba_shift: shift,
                blocks: ns.blocks,
            }
        }
    };
    // Host-to-controller data comes in the capsule (all of it) or by R2T (none
    // in the capsule); nothing else may carry data.
    let out = plan.data_out_len() as u64;
    match plan {
        IoPlan::Write { .. } | IoPlan::DatasetManagement { .. } => {
            let ok = match sgl_type {
                sgl::IN_CAPSULE => capsule_data as u64 == sgl_len,
                sgl::TRANSPORT => capsule_data == 0,
                _ => return Err(Status::SGL_TYPE_INVALID),
            };
            if !ok {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            let _ = out;
        }
        IoPlan::Read { .. } => {}
        _ => {
            if capsule_data != 0 {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
        }
    }
    Ok(plan)
}

/// Parses the Dataset Management ranges into byte ranges, checking each.
pub(crate) fn dsm_ranges(
    data: &[u8],
    ranges: u32,
    lba_shift: u8,
    blocks: u64,
) -> Result<Vec<ByteRange>, Status> {
    let mut out = Vec::with_capacity(ranges as usize);
    for i in 0..ranges as usize {
        let at = i * 16;
        if at + 16 > data.len() {
            return Err(Status::DATA_SGL_LENGTH_INVALID);
        }
        let nlb = le32(data, at + 4) as u64;
        let slba = le64(data, at + 8);
        if nlb == 0 {
            continue;
        }
        match slba.checked_add(nlb) {
            Some(end) if end <= blocks => {}
            _ => return Err(Status::LBA_OUT_OF_RANGE),
        }
        out.push(ByteRange {
            offset: slba << lba_shift,
            len: nlb << lba_shift,
        });
    }
    Ok(out)
}
