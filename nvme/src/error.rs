//! The crate's one error type.

use core::fmt;

/// NVMe/TCP Fatal Error Status codes carried by a Termination Request PDU
/// (NVMe/TCP transport specification 1.0, "H2CTermReq/C2HTermReq").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FatalErrorStatus {
    /// A PDU header field is invalid; FEI is the byte offset of the field.
    InvalidHeaderField = 0x01,
    /// A PDU arrived that is not allowed in the connection's current state.
    PduSequenceError = 0x02,
    /// The header digest did not match.
    HeaderDigestError = 0x03,
    /// Data of an H2CData PDU lies outside the range the R2T asked for.
    DataTransferOutOfRange = 0x04,
    /// A PDU carries more data than negotiated (MAXH2CDATA, in-capsule size).
    DataTransferLimitExceeded = 0x05,
    /// A parameter of ICReq is not supported; FEI is its byte offset.
    UnsupportedParameter = 0x06,
}

impl FatalErrorStatus {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x01 => Self::InvalidHeaderField,
            0x02 => Self::PduSequenceError,
            0x03 => Self::HeaderDigestError,
            0x04 => Self::DataTransferOutOfRange,
            0x05 => Self::DataTransferLimitExceeded,
            0x06 => Self::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// More bytes are needed before the PDU can be decoded (not fatal).
    Truncated,
    /// A PDU header field is invalid; `offset` is the field's byte offset in the header.
    InvalidHeaderField {
        offset: u32,
    },
    /// The PDU type is not one this side may receive (or not defined at all).
    UnexpectedPduType {
        pdu_type: u8,
    },
    /// A PDU arrived out of sequence (e.g. a command before ICReq, a second ICReq).
    PduSequence,
    /// Header digest mismatch.
    HeaderDigest {
        received: u32,
        computed: u32,
    },
    /// Data digest mismatch.
    DataDigest {
        received: u32,
        computed: u32,
    },
    /// H2CData outside the range solicited by the R2T.
    DataOutOfRange,
    /// A PDU carries more data than the negotiated limit.
    DataLimitExceeded {
        length: u32,
        limit: u32,
    },
    /// An ICReq parameter this target does not support; `offset` is its byte offset.
    UnsupportedParameter {
        offset: u32,
    },
    /// The peer sent a termination request.
    PeerTerminated {
        fes: u16,
    },
    /// The target configuration is invalid; the text says which value and why.
    InvalidConfig(&'static str),
    /// A block completion names a request this connection does not know
    /// (already completed, or the connection was reset).
    UnknownBlockRequest(u64),
    /// The connection is closed; nothing more can be done with it.
    ConnectionClosed,
    /// No such ANA group or namespace in the configuration.
    NoSuchAnaGroup(u32),
    NoSuchNamespace(u32),
}

impl Error {
    /// The Fatal Error Status and Field Error Information a C2HTermReq reports for
    /// this error, or `None` if it is not a transport-fatal error.
    pub fn termination(&self) -> Option<(FatalErrorStatus, u32)> {
        Some(match *self {
            Error::InvalidHeaderField { offset } => (FatalErrorStatus::InvalidHeaderField, offset),
            Error::UnexpectedPduType { .. } => (FatalErrorStatus::InvalidHeaderField, 0),
            Error::PduSequence => (FatalErrorStatus::PduSequenceError, 0),
            Error::HeaderDigest { .. } => (FatalErrorStatus::HeaderDigestError, 0),
            Error::DataOutOfRange => (FatalErrorStatus::DataTransferOutOfRange, 0),
            Error::DataLimitExceeded { .. } => (FatalErrorStatus::DataTransferLimitExceeded, 0),
            Error::UnsupportedParameter { offset } => {
                (FatalErrorStatus::UnsupportedParameter, offset)
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "PDU truncated: more bytes needed"),
            Error::InvalidHeaderField { offset } => {
                write!(f, "invalid PDU header field at byte offset {offset}")
            }
            Error::UnexpectedPduType { pdu_type } => {
                write!(f, "unexpected PDU type {pdu_type:#04x}")
            }
            Error::PduSequence => write!(f, "PDU out of sequence"),
            Error::HeaderDigest { received, computed } => write!(
                f,
                "header digest mismatch: received {received:#010x}, computed {computed:#010x}"
            ),
            Error::DataDigest { received, computed } => write!(
                f,
                "data digest mismatch: received {received:#010x}, computed {computed:#010x}"
            ),
            Error::DataOutOfRange => write!(f, "H2CData outside the solicited range"),
            Error::DataLimitExceeded { length, limit } => {
                write!(f, "PDU data length {length} exceeds the limit {limit}")
            }
            Error::UnsupportedParameter { offset } => {
                write!(f, "unsupported ICReq parameter at byte offset {offset}")
            }
            Error::PeerTerminated { fes } => {
                write!(f, "peer terminated the connection (FES {fes:#06x})")
            }
            Error::InvalidConfig(why) => write!(f, "invalid target configuration: {why}"),
            Error::UnknownBlockRequest(id) => write!(f, "unknown block request id {id}"),
            Error::ConnectionClosed => write!(f, "connection closed"),
            Error::NoSuchAnaGroup(g) => write!(f, "no ANA group {g} in the configuration"),
            Error::NoSuchNamespace(n) => write!(f, "no namespace {n} in the configuration"),
        }
    }
}

impl core::error::Error for Error {}
