//! Host-side tooling for the tandem image: build it, boot it under QEMU,
//! and drive its console and QMP. Used by the `tandem` launcher binary and
//! by the integration tests.
//!
//! Layers, from pure to effectful:
//! - [`vm`]: what a VM is made of ([`VmSpec`]) and its QEMU command line;
//! - [`cmdline`], [`disk`], [`cli`]: the image's command line, disk files and
//!   the launcher's own arguments;
//! - [`node`]: a running QEMU ([`Node`]): waits for console lines, talks to
//!   the console ([`ConsoleClient`]) and QMP ([`Qmp`]), kills QEMU on drop;
//! - [`accel`]: KVM or TCG; [`image`]: building the image;
//! - [`layout`] (pure), [`pairnet`] and [`pair`]: the HA pair and its
//!   witness in the background (`up`, `down`, `status`, `fault`, `console`);
//! - [`sys`]: every libc call, behind safe functions (the only `unsafe`).

#![deny(unsafe_code)]

pub mod accel;
pub mod bench;
pub mod cli;
pub mod cmdline;
pub mod console;
pub mod disk;
pub mod error;
pub mod image;
pub mod layout;
pub mod node;
pub mod nvme_load;
pub mod pair;
pub mod pairkey;
pub mod pairnet;
pub mod qmp;
pub mod sys;
pub mod vm;

pub use accel::{Accel, AccelChoice};
pub use cmdline::KernelCmdline;
pub use console::{ConsoleClient, Ready};
pub use error::{Error, Result};
pub use image::build_image;
pub use layout::{NodeName, PairLayout, Subnet};
pub use node::{Node, free_port};
pub use qmp::Qmp;
pub use vm::{
    Boot, ConsoleMode, ImageExit, Mac, NetBackend, NicSpec, PortForward, TftpBoot, VmSpec,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under the system temp dir, removed on drop unless
/// `TANDEM_KEEP_DIRS` is set (then its path is printed to stderr).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tandem-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(TempDir {
            path,
            keep: std::env::var_os("TANDEM_KEEP_DIRS").is_some(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
