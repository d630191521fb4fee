//! The tandem image's logic, free of `unsafe` and tested on the host:
//! command-line configuration, console command parsing, the disk test
//! pattern, and the glue that pumps data between the devices and the
//! protocol crates — the NVMe/TCP service ([`storage`]), the HA pair's
//! executor ([`pair`]), the NVMe service's block backends ([`backend`]:
//! the local disks or the pair) and the pair's address takeover
//! ([`takeover`]), and the TSC rate measurement ([`tsc`]) — over two
//! narrow device traits: a NIC's frame queues ([`tandem_net::FrameQueues`],
//! through [`port::NetPort`]) and a disk's request queue
//! ([`block::BlockQueue`]). The hardware layer and the event loop live in
//! the binary (`main.rs`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backend;
pub mod block;
pub mod config;
pub mod console;
pub mod outbox;
pub mod own_address;
pub mod pair;
pub mod pattern;
pub mod port;
pub mod profile;
pub mod storage;
pub mod takeover;
pub mod tsc;
pub mod virtio;

#[cfg(test)]
mod tests;
