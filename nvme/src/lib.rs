//! Sans-IO NVMe/TCP target.
//!
//! Layers, bottom up:
//! - [`wire`]: NVMe/TCP PDUs ([`wire::Packet`]/[`wire::Repr`]), submission and
//!   completion queue entries, status codes. Checked parsing; never panics on
//!   untrusted bytes.
//! - [`auth`]: NVMe in-band authentication (DH-HMAC-CHAP), per queue.
//! - [`Target`]: configuration and the state shared by all connections
//!   (controllers, ANA groups, events).
//! - [`Connection`]: one TCP connection = one NVMe queue. Bytes in (split
//!   anywhere), bytes out (drained by the caller), block requests out and
//!   their completions in (any order), `poll(now)` for timers.
//!
//! Nothing here does I/O or reads a clock: the caller moves bytes between the
//! connection and its TCP socket, executes block requests, and passes the
//! current time ([`Instant`]).
//!
//! See `docs/nvme.md` for what is implemented and what is not.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod admin;
pub mod auth;
pub mod block;
pub mod config;
mod connection;
pub mod digest;
pub mod error;
#[cfg(feature = "host")]
pub mod host;
mod io;
mod target;
pub mod wire;

pub use block::{BlockError, BlockOp, BlockOutcome, BlockRequest, ByteRange, RequestId};
pub use config::{
    AnaState, DISCOVERY_NQN, Limits, NamespaceConfig, Portal, PortalAddress, TargetConfig,
};
pub use connection::{Connection, ConnectionInfo, ConnectionState, QueueStats};
pub use digest::Crc32c;
pub use error::{Error, FatalErrorStatus};
pub use target::{
    AEN_ANA_CHANGE, ControllerInfo, RemovalReason, SubsystemKind, Target, TargetEvent, TargetStats,
};

/// A point in time on the caller's monotonic clock, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }
    pub const fn millis(self) -> u64 {
        self.0
    }
    pub const fn add_millis(self, ms: u64) -> Self {
        Instant(self.0.saturating_add(ms))
    }
}

#[cfg(test)]
mod tests {
    fn assert_send<T: Send>() {}

    #[test]
    fn state_can_live_behind_a_lock_in_a_static() {
        assert_send::<crate::Target>();
        assert_send::<crate::Connection>();
        assert_send::<crate::BlockRequest>();
    }
}
