//! The crate's error type.

use core::fmt;

/// Everything that can go wrong when decoding peer bytes or disk metadata, or
/// when the caller asks for something impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the fixed part of the structure.
    Truncated,
    /// The magic number is not ours: not a tandem message or metadata block.
    BadMagic,
    /// A format version this implementation does not speak.
    UnsupportedVersion(u16),
    /// The CRC-32C does not match: corrupted or torn.
    BadChecksum,
    /// A message kind this version does not know.
    UnknownKind(u8),
    /// A field holds a value outside its defined range.
    InvalidField(&'static str),
    /// A declared length exceeds what this implementation accepts.
    TooLarge { length: u64, max: u64 },
    /// Neither superblock copy is valid: the disk has no tandem metadata.
    NoValidSuperblock,
    /// The metadata belongs to another node or another pair, or was
    /// formatted for another disk geometry.
    MetadataMismatch(&'static str),
    /// The configuration is unusable (e.g. disk too small for the metadata).
    InvalidConfig(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "truncated message or block"),
            Error::BadMagic => write!(f, "bad magic number (not tandem HA data)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Error::BadChecksum => write!(f, "CRC-32C mismatch (corrupted or torn)"),
            Error::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            Error::InvalidField(name) => write!(f, "invalid value in field {name}"),
            Error::TooLarge { length, max } => write!(f, "length {length} exceeds limit {max}"),
            Error::NoValidSuperblock => {
                write!(f, "no valid superblock copy: disk not formatted for tandem")
            }
            Error::MetadataMismatch(what) => write!(f, "metadata does not match this node: {what}"),
            Error::InvalidConfig(what) => write!(f, "invalid HA configuration: {what}"),
        }
    }
}
