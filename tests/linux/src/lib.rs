//! Runs the stock Linux NVMe/TCP host — and Linux's own nvmet-tcp target, the
//! reference tandem is measured against — in QEMU guests under TCG.
//!
//! The guest (Debian's 6.1 kernel plus an initramfs with nvme-cli, fio and
//! mke2fs) is built by `tests/linux/build-guest.sh`; [`GuestImage::ensure`]
//! runs it and reuses its cached output. A guest boots, configures its NICs
//! from [`GuestConfig`], runs one shell script passed through a 9p share, writes
//! the script's output and exit status back and powers off; [`run`] returns
//! them as a [`GuestOutcome`]. [`spawn`] starts a guest that runs alongside
//! others (a target and an initiator) and can be signalled through marks.
//!
//! Networks never leave the machine: point-to-point UDP on 127.0.0.1,
//! multicast segments on the loopback of a network namespace ([`Netns`]), or
//! taps in such a namespace.
//!
//! [`cluster`] is the HA pair (a, b, the witness) with a Linux host on
//! both paths, for the HA tests.
//!
//! [`scenario`] has ready-made guests: an nvmet-tcp target, a smoke-test
//! initiator and the fio benchmark; [`fio`] parses and renders fio results.

pub mod cluster;
pub mod error;
pub mod fio;
pub mod guest;
pub mod image;
pub mod native;
pub mod netns;
pub mod scenario;
pub mod tandem;

pub use error::{Error, Result};
pub use guest::{Disk, GuestConfig, GuestOutcome, NetBackend, Nic, RunningGuest, run, spawn};
pub use image::{GuestImage, Release};
pub use netns::Netns;
