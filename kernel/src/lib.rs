//! The tandem image's host-testable logic: command-line configuration,
//! console command parsing and the disk test pattern. The hardware layer and
//! the event loop live in the binary (`main.rs`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod console;
pub mod pattern;
