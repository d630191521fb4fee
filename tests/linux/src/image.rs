//! The guest's kernel and initramfs, built by `build-guest.sh`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A built guest: Debian's kernel and the initramfs with /init.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
}

/// The repository root (this crate lives in `tests/linux`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Where the guest and its downloads are cached:
/// `$TANDEM_LINUX_GUEST_DIR`, or `<repo>/target/linux-guest`.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("TANDEM_LINUX_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/linux-guest"))
}

/// The builder script.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("build-guest.sh")
}

impl GuestImage {
    /// Builds the guest if it is missing or stale (the script decides and is
    /// a no-op otherwise), once per process, and returns it.
    pub fn ensure() -> Result<GuestImage> {
        static BUILT: OnceLock<std::result::Result<GuestImage, String>> = OnceLock::new();
        BUILT
            .get_or_init(|| Self::build().map_err(|e| e.to_string()))
            .clone()
            .map_err(|tail| Error::BuildFailed {
                script: build_script(),
                tail,
            })
    }

    fn build() -> Result<GuestImage> {
        let script = build_script();
        let out = Command::new("bash")
            .arg(&script)
            .env("TANDEM_LINUX_GUEST_DIR", guest_dir())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            return Err(Error::BuildFailed {
                script,
                tail: tail_lines(&text, 30),
            });
        }
        Self::existing().ok_or_else(|| Error::BuildFailed {
            script,
            tail: format!(
                "the script succeeded but {} has no vmlinuz/initramfs.img/guest.env",
                guest_dir().display()
            ),
        })
    }

    /// The cached guest, if it was built before (no build, no staleness check).
    pub fn existing() -> Option<GuestImage> {
        let dir = guest_dir();
        let env = std::fs::read_to_string(dir.join("guest.env")).ok()?;
        let kernel_version = env
            .lines()
            .find_map(|l| l.strip_prefix("KERNEL_VERSION="))?
            .trim()
            .to_string();
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.img"),
            kernel_version,
        };
        (image.kernel.is_file() && image.initramfs.is_file()).then_some(image)
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
