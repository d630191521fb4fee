//! tandem-ha: the logic of a tandem HA pair, with no I/O of its own.
//!
//! Two data nodes (`a`, `b`) hold a replica of the same namespaces; a third
//! member, the witness, holds no data and breaks ties. This crate is sans-IO:
//! the kernel feeds it datagrams, replication-stream bytes, completions and a
//! monotonic clock value, and executes the [`node::Action`]s it returns in
//! order. It never reads a clock, never touches a disk or a socket.
//!
//! Layering:
//! - [`wire`]: the byte formats (control datagrams, replication stream frames),
//!   `Packet`/`Repr` style, checked parsing that never panics on peer bytes.
//! - [`metadata`] and [`bitmap`]: the on-disk metadata area at the end of each
//!   data disk (two superblock copies, checksummed dirty-region bitmap blocks).
//! - [`sizes`]: the namespace size the two data nodes agree on.
//! - [`node`]: the data node state machine (roles, epochs, leases, elections,
//!   synchronous replication, resync, switchover, fencing, ANA state).
//! - [`witness`]: the witness state machine (votes and lease grants, no data).
//! - [`hostpath`]: whether a data node can serve hosts (its front-end),
//!   judged with hysteresis and reported in heartbeats.
//! - [`announce`]: when ARP for a front-end address goes out, and when a
//!   node that may have been deposed answers for its own address again.
//! - [`takeover`]: when a primary takes over its silent peer's front-end
//!   addresses and when it gives them back.
//!
//! The protocol and its safety argument are in `docs/ha-protocol.md`; the
//! disk layout in `docs/on-disk-format.md`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod announce;
pub mod auth;
pub mod bitmap;
pub mod error;
pub mod generations;
pub mod hostpath;
pub mod metadata;
pub mod node;
pub mod sizes;
pub mod takeover;
pub mod time;
pub mod types;
pub mod voter;
pub mod wire;
pub mod witness;

pub use error::Error;
pub use time::{Duration, Instant};
pub use types::{AnaState, DataState, EpochRecord, LinkId, NodeId, Role};
