//! NVMe completion status values (Status Code Type + Status Code).

/// A completion status: SCT, SC and the Do Not Retry bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

const GENERIC: u8 = 0;
const COMMAND_SPECIFIC: u8 = 1;
const MEDIA: u8 = 2;
const PATH: u8 = 3;

const fn s(sct: u8, sc: u8, dnr: bool) -> Status {
    Status { sct, sc, dnr }
}

impl Status {
    pub const SUCCESS: Status = s(GENERIC, 0x00, false);
    pub const INVALID_OPCODE: Status = s(GENERIC, 0x01, true);
    pub const INVALID_FIELD: Status = s(GENERIC, 0x02, true);
    pub const COMMAND_ID_CONFLICT: Status = s(GENERIC, 0x03, true);
    pub const DATA_TRANSFER_ERROR: Status = s(GENERIC, 0x04, false);
    pub const INTERNAL_ERROR: Status = s(GENERIC, 0x06, false);
    pub const INVALID_NAMESPACE: Status = s(GENERIC, 0x0B, true);
    pub const COMMAND_SEQUENCE_ERROR: Status = s(GENERIC, 0x0C, true);
    pub const INVALID_SGL_DESCRIPTOR: Status = s(GENERIC, 0x0D, true);
    pub const DATA_SGL_LENGTH_INVALID: Status = s(GENERIC, 0x0F, true);
    pub const SGL_TYPE_INVALID: Status = s(GENERIC, 0x11, true);
    pub const TRANSIENT_TRANSPORT_ERROR: Status = s(GENERIC, 0x22, false);
    pub const LBA_OUT_OF_RANGE: Status = s(GENERIC, 0x80, true);
    pub const NAMESPACE_NOT_READY: Status = s(GENERIC, 0x82, false);

    pub const INVALID_QUEUE_IDENTIFIER: Status = s(COMMAND_SPECIFIC, 0x01, true);
    pub const INVALID_QUEUE_SIZE: Status = s(COMMAND_SPECIFIC, 0x02, true);
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Status = s(COMMAND_SPECIFIC, 0x03, true);
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: Status = s(COMMAND_SPECIFIC, 0x05, true);
    pub const INVALID_LOG_PAGE: Status = s(COMMAND_SPECIFIC, 0x09, true);
    pub const FEATURE_NOT_SAVEABLE: Status = s(COMMAND_SPECIFIC, 0x0D, true);
    pub const FEATURE_NOT_CHANGEABLE: Status = s(COMMAND_SPECIFIC, 0x0E, true);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = s(COMMAND_SPECIFIC, 0x80, true);
    pub const CONNECT_CONTROLLER_BUSY: Status = s(COMMAND_SPECIFIC, 0x81, true);
    /// Controller Busy for a while only: the host may retry (DNR clear).
    pub const CONNECT_CONTROLLER_BUSY_RETRY: Status = s(COMMAND_SPECIFIC, 0x81, false);
    pub const CONNECT_INVALID_PARAMETERS: Status = s(COMMAND_SPECIFIC, 0x82, true);
    pub const CONNECT_INVALID_HOST: Status = s(COMMAND_SPECIFIC, 0x84, true);
    /// The queue must authenticate first (NVMe Base 2.0: SCT 1h, SC 91h).
    pub const AUTHENTICATION_REQUIRED: Status = s(COMMAND_SPECIFIC, 0x91, true);

    pub const WRITE_FAULT: Status = s(MEDIA, 0x80, false);
    pub const UNRECOVERED_READ_ERROR: Status = s(MEDIA, 0x81, false);

    /// Path-related statuses are retried by the host on another path: no DNR.
    pub const INTERNAL_PATH_ERROR: Status = s(PATH, 0x00, false);
    pub const ANA_PERSISTENT_LOSS: Status = s(PATH, 0x01, false);
    pub const ANA_INACCESSIBLE: Status = s(PATH, 0x02, false);
    pub const ANA_TRANSITION: Status = s(PATH, 0x03, false);

    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 16-bit CQE status field (phase bit zero).
    pub fn to_field(self) -> u16 {
        ((self.dnr as u16) << 15) | (((self.sct & 0x7) as u16) << 9) | ((self.sc as u16) << 1)
    }

    pub fn from_field(v: u16) -> Status {
        Status {
            sct: ((v >> 9) & 0x7) as u8,
            sc: ((v >> 1) & 0xFF) as u8,
            dnr: v & 0x8000 != 0,
        }
    }
}
