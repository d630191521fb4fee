//! The guest's kernel and initramfs, built by `build-guest.sh`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Which Debian release a guest is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 12 "bookworm": Linux 6.1, nvme-cli 2.4. The default.
    Debian12,
    /// Debian 13 "trixie": Linux 6.12 with NVMe in-band authentication
    /// (`CONFIG_NVME_AUTH`, `CONFIG_NVME_TARGET_AUTH`), nvme-cli 2.13.
    Debian13,
}

impl Release {
    /// `debian12` / `debian13`, as `build-guest.sh --release` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Release::Debian12 => "debian12",
            Release::Debian13 => "debian13",
        }
    }

    pub fn parse(name: &str) -> Option<Release> {
        match name {
            "debian12" | "12" | "bookworm" => Some(Release::Debian12),
            "debian13" | "13" | "trixie" => Some(Release::Debian13),
            _ => None,
        }
    }

    /// The release tests run their Linux hosts on: `$TANDEM_LINUX_GUEST`
    /// (`debian12` or `debian13`), Debian 12 when unset. Panics on any other
    /// value, so a typo never silently tests the wrong host.
    pub fn from_env() -> Release {
        match std::env::var("TANDEM_LINUX_GUEST") {
            Err(_) => Release::Debian12,
            Ok(v) if v.is_empty() => Release::Debian12,
            Ok(v) => Release::parse(&v).unwrap_or_else(|| {
                panic!("TANDEM_LINUX_GUEST={v:?}: expected debian12 or debian13")
            }),
        }
    }

    /// Where this release's guest is built: [`guest_dir`] for Debian 12,
    /// its `debian13/` subdirectory for Debian 13.
    pub fn dir(self) -> PathBuf {
        match self {
            Release::Debian12 => guest_dir(),
            Release::Debian13 => guest_dir().join("debian13"),
        }
    }
}

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

/// Where the guest and its downloads are cached, and where runs keep their
/// files (`runs/`): `$TANDEM_LINUX_GUEST_DIR`, or `<repo>/target/linux-guest`.
/// The Debian 13 guest is built in its subdirectory (see [`Release::dir`]).
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
    /// Builds the guest of [`Release::from_env`] (Debian 12 unless
    /// `TANDEM_LINUX_GUEST` says otherwise) if it is missing or stale, once
    /// per process, and returns it.
    pub fn ensure() -> Result<GuestImage> {
        Self::ensure_release(Release::from_env())
    }

    /// Builds `release`'s guest if it is missing or stale (the script decides
    /// and is a no-op otherwise), once per process, and returns it.
    pub fn ensure_release(release: Release) -> Result<GuestImage> {
        static DEBIAN12: OnceLock<std::result::Result<GuestImage, String>> = OnceLock::new();
        static DEBIAN13: OnceLock<std::result::Result<GuestImage, String>> = OnceLock::new();
        let built = match release {
            Release::Debian12 => &DEBIAN12,
            Release::Debian13 => &DEBIAN13,
        };
        built
            .get_or_init(|| Self::build(release).map_err(|e| e.to_string()))
            .clone()
            .map_err(|tail| Error::BuildFailed {
                script: build_script(),
                tail,
            })
    }

    fn build(release: Release) -> Result<GuestImage> {
        let script = build_script();
        let out = Command::new("bash")
            .arg(&script)
            .args(["--release", release.name()])
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
        Self::existing_release(release).ok_or_else(|| Error::BuildFailed {
            script,
            tail: format!(
                "the script succeeded but {} has no vmlinuz/initramfs.img/guest.env",
                release.dir().display()
            ),
        })
    }

    /// The cached guest of [`Release::from_env`], if it was built before (no
    /// build, no staleness check).
    pub fn existing() -> Option<GuestImage> {
        Self::existing_release(Release::from_env())
    }

    /// The cached guest of `release`, if it was built before.
    pub fn existing_release(release: Release) -> Option<GuestImage> {
        let dir = release.dir();
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
