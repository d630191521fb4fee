//! Ready-made guests: Linux's nvmet-tcp target, the smoke-test initiator and
//! the fio benchmark, on one Ethernet segment in a fresh network namespace.

use crate::error::{Error, Result};
use crate::fio::{self, FioJob, FioResult};
use crate::guest::{GuestConfig, GuestOutcome, NetBackend, RunningGuest, spawn};
use crate::image::GuestImage;
use crate::netns::Netns;
use crate::tandem::TandemTarget;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Guest script: nvmet-tcp on /dev/vda through configfs (env NVMET_*).
pub const NVMET_TARGET_SCRIPT: &str = include_str!("../guest/nvmet-target.sh");
/// Guest script: discover, connect, inspect, fio verify, disconnect.
pub const INITIATOR_SMOKE_SCRIPT: &str = include_str!("../guest/initiator-smoke.sh");
/// Guest script: the whole Linux-host check against an appliance the host
/// reboots halfway (marks and signals in its header).
pub const INITIATOR_APPLIANCE_SCRIPT: &str = include_str!("../guest/initiator-appliance.sh");
/// Guest script: the fio benchmark against several targets at once, job by
/// job (env TARGETS, FIO_JOBS, …).
pub const FIO_COMPARE_SCRIPT: &str = include_str!("../guest/fio-compare.sh");
/// Guest script: NVMe in-band authentication (DH-HMAC-CHAP) against a target
/// that requires it (no secret, wrong secret, right secret + fio verify,
/// bidirectional, wrong controller secret). Needs the Debian 13 guest.
pub const INITIATOR_AUTH_SCRIPT: &str = include_str!("../guest/initiator-auth.sh");
/// Guest script: the fio benchmark (env FIO_JOBS, FIO_RUNTIME, …).
pub const FIO_BENCH_SCRIPT: &str = include_str!("../guest/fio-bench.sh");

/// The multicast segment of a [`Segment::Mcast`] rig: on the loopback of the
/// rig's own namespace.
pub const SEGMENT: NetBackend = NetBackend::Mcast {
    group: Ipv4Addr::new(230, 0, 0, 1),
    port: 5000,
};
/// The segment's subnet is 10.0.0.0/24 (inside the namespace only).
pub const PREFIX_LEN: u8 = 24;

/// An NVMe/TCP subsystem reachable on the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
    pub subnqn: String,
}

impl Endpoint {
    fn env(&self, config: GuestConfig) -> GuestConfig {
        config
            .env("TARGET_ADDR", self.address)
            .env("TARGET_PORT", self.port)
            .env("SUBNQN", &self.subnqn)
    }
}

/// Shape of the guests (the same for target and initiator, so a comparison
/// between targets is on identical virtual hardware).
#[derive(Debug, Clone, Copy)]
pub struct GuestShape {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl Default for GuestShape {
    fn default() -> Self {
        GuestShape {
            vcpus: 1,
            memory_mib: 1024,
        }
    }
}

/// Creates (or truncates to) a sparse raw disk file of `bytes`.
pub fn create_disk(path: &Path, bytes: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let f = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.set_len(bytes)
        .map_err(|e| Error::io(format!("sizing {}", path.display()), e))
}

/// How the guests of a [`Rig`] share one Ethernet segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// QEMU `-netdev socket` multicast ([`SEGMENT`]): no devices, but every
    /// frame is a UDP datagram and there is no TSO/GSO (MTU-sized frames).
    Mcast,
    /// One tap per guest on a bridge `br0`: QEMU passes offloads (vnet
    /// headers), so a Linux guest sends 64 KiB TSO frames; `tgN` taps can be
    /// set down with [`Netns::set_link`] to cut a guest's cable.
    Bridge,
}

/// A network namespace with one segment, on which guests are started.
pub struct Rig {
    pub netns: Netns,
    pub segment: Segment,
    label: String,
    next_host: u8,
    taps: u32,
}

impl Rig {
    /// A fresh namespace with a multicast segment; guest names start with `label`.
    pub fn new(label: &str) -> Result<Rig> {
        Self::with_segment(label, Segment::Mcast)
    }

    pub fn with_segment(label: &str, segment: Segment) -> Result<Rig> {
        let netns = Netns::create()?;
        if segment == Segment::Bridge {
            netns.add_bridge("br0")?;
        }
        Ok(Rig {
            netns,
            segment,
            label: label.to_string(),
            next_host: 20,
            taps: 0,
        })
    }

    /// A NIC backend on the segment: for a bridge, a new tap `tgN` (its name
    /// is in the returned [`NetBackend::Tap`]).
    pub fn backend(&mut self) -> Result<NetBackend> {
        match self.segment {
            Segment::Mcast => Ok(SEGMENT),
            Segment::Bridge => {
                let ifname = format!("tg{}", self.taps);
                self.taps += 1;
                self.netns.add_tap(&ifname, Some("br0"))?;
                Ok(NetBackend::Tap { ifname })
            }
        }
    }

    /// Frames through the `index`th tap so far (`tgN`; a bridge segment
    /// only): (sent by its guest, delivered to its guest).
    pub fn tap_frames(&self, index: u32) -> Result<(u64, u64)> {
        let read = |counter: &str| -> Result<u64> {
            let path = format!("/sys/class/net/tg{index}/statistics/{counter}");
            let text = self.netns.exec(&["cat", &path])?;
            text.trim().parse().map_err(|_| Error::Command {
                command: format!("cat {path}"),
                stderr: format!("not a number: {text}"),
            })
        };
        // The tap's receive side is what the guest sent.
        Ok((read("rx_packets")?, read("tx_packets")?))
    }

    /// The next free address on the segment (10.0.0.20, .21, …).
    fn next_address(&mut self) -> String {
        let a = format!("10.0.0.{}/{PREFIX_LEN}", self.next_host);
        self.next_host += 1;
        a
    }

    /// A guest on the segment: name `<label>-<role>`, the next free address.
    pub fn guest(&mut self, role: &str, script: &str, shape: GuestShape) -> Result<GuestConfig> {
        let address = self.next_address();
        let backend = self.backend()?;
        Ok(GuestConfig::new(&format!("{}-{role}", self.label), script)
            .vcpus(shape.vcpus)
            .memory_mib(shape.memory_mib)
            .nic(backend, &address)
            .in_netns(&self.netns))
    }

    /// Starts Linux's nvmet-tcp on a disk at 10.0.0.10 (not awaited: see
    /// [`NvmetTarget::wait_ready`]; initiators retry discovery meanwhile).
    pub fn start_nvmet(
        &mut self,
        image: &GuestImage,
        disk: &Path,
        port: u16,
        shape: GuestShape,
        lifetime: Duration,
    ) -> Result<NvmetTarget> {
        self.start_nvmet_with(image, disk, port, shape, lifetime, None)
    }

    /// [`Rig::start_nvmet`], and with `auth` only that host may connect and
    /// it must authenticate (DH-HMAC-CHAP; Debian 13 guest).
    pub fn start_nvmet_with(
        &mut self,
        image: &GuestImage,
        disk: &Path,
        port: u16,
        shape: GuestShape,
        lifetime: Duration,
        auth: Option<&NvmetAuth>,
    ) -> Result<NvmetTarget> {
        let endpoint = Endpoint {
            address: Ipv4Addr::new(10, 0, 0, 10),
            port,
            subnqn: "nqn.2026-11.io.tandem.test:nvmet-ref".into(),
        };
        let config = GuestConfig::new(&format!("{}-nvmet", self.label), NVMET_TARGET_SCRIPT)
            .vcpus(shape.vcpus)
            .memory_mib(shape.memory_mib)
            .nic(
                self.backend()?,
                &format!("{}/{PREFIX_LEN}", endpoint.address),
            )
            .disk(disk)
            .in_netns(&self.netns)
            .env("NVMET_NQN", &endpoint.subnqn)
            .env("NVMET_ADDR", endpoint.address)
            .env("NVMET_PORT", port)
            .env("NVMET_SERIAL", "nvmetref0001")
            .env("NVMET_LIFETIME", lifetime.as_secs())
            .timeout(lifetime + Duration::from_secs(60));
        let config = match auth {
            None => config,
            Some(a) => config
                .env("NVMET_HOSTNQN", &a.hostnqn)
                .env("NVMET_DHCHAP_KEY", &a.host_secret)
                .env(
                    "NVMET_DHCHAP_CTRL_KEY",
                    a.ctrl_secret.as_deref().unwrap_or(""),
                )
                .env("NVMET_DHCHAP_HASH", &a.hash)
                .env("NVMET_DHCHAP_DHGROUP", &a.dhgroup),
        };
        Ok(NvmetTarget {
            guest: spawn(image, &config)?,
            endpoint,
        })
    }

    /// Boots the tandem image at 10.0.0.11 on the segment with `disk` as
    /// namespace 1 (not awaited: see [`TandemTarget::wait_ready`]).
    pub fn start_tandem(
        &mut self,
        disk: &Path,
        shape: GuestShape,
        extra_cmdline: &str,
    ) -> Result<TandemTarget> {
        let backend = self.backend()?;
        TandemTarget::spawn(
            &format!("{}-tandem", self.label),
            self.netns.name(),
            backend,
            disk,
            shape,
            extra_cmdline,
        )
    }

    /// The smoke test initiator against `endpoint` (extra `nvme connect`
    /// options such as `-i 2 --hdr-digest --data-digest` in `connect_opts`).
    pub fn smoke_initiator(
        &mut self,
        endpoint: &Endpoint,
        connect_opts: &str,
        shape: GuestShape,
    ) -> Result<GuestConfig> {
        let c = self
            .guest("initiator", INITIATOR_SMOKE_SCRIPT, shape)?
            .timeout(Duration::from_secs(240));
        Ok(endpoint.env(c).env("CONNECT_OPTS", connect_opts))
    }

    /// The authentication initiator ([`INITIATOR_AUTH_SCRIPT`]) against
    /// `endpoint`, as host `auth.hostnqn`, with the wrong secrets to try.
    pub fn auth_initiator(
        &mut self,
        endpoint: &Endpoint,
        auth: &AuthCase,
        shape: GuestShape,
    ) -> Result<GuestConfig> {
        let c = self
            .guest("initiator", INITIATOR_AUTH_SCRIPT, shape)?
            .timeout(Duration::from_secs(300));
        Ok(endpoint
            .env(c)
            .env("HOSTNQN", &auth.hostnqn)
            .env("HOST_SECRET", &auth.host_secret)
            .env("WRONG_SECRET", &auth.wrong_secret)
            .env("CTRL_SECRET", &auth.ctrl_secret)
            .env("WRONG_CTRL_SECRET", &auth.wrong_ctrl_secret))
    }

    /// The fio benchmark initiator against `endpoint`.
    pub fn bench_initiator(
        &mut self,
        endpoint: &Endpoint,
        jobs: &[FioJob],
        runtime: Duration,
        shape: GuestShape,
    ) -> Result<GuestConfig> {
        let per_job = runtime.as_secs() + 2;
        // Guest time runs slow under TCG on a busy host: allow 4× wall.
        let limit = Duration::from_secs(90 + 4 * per_job * jobs.len() as u64);
        let c = self.guest("bench", FIO_BENCH_SCRIPT, shape)?.timeout(limit);
        Ok(endpoint
            .env(c)
            .env("FIO_JOBS", fio::jobs_env(jobs))
            .env("FIO_RUNTIME", runtime.as_secs())
            .env("FIO_RAMP", 2))
    }
}

/// DH-HMAC-CHAP for Linux's nvmet: the one host allowed, its secrets
/// (`DHHC-1:…`), and the hash and DH group nvmet picks
/// (`hmac(sha256)`…, `null`/`ffdhe2048`…).
#[derive(Debug, Clone)]
pub struct NvmetAuth {
    pub hostnqn: String,
    pub host_secret: String,
    pub ctrl_secret: Option<String>,
    pub hash: String,
    pub dhgroup: String,
}

/// What [`Rig::auth_initiator`] tries: the right and wrong secrets of one host
/// (`ctrl_secret` empty: no bidirectional cases).
#[derive(Debug, Clone)]
pub struct AuthCase {
    pub hostnqn: String,
    pub host_secret: String,
    pub wrong_secret: String,
    pub ctrl_secret: String,
    pub wrong_ctrl_secret: String,
}

/// A DH-HMAC-CHAP secret as `nvme gen-dhchap-key` prints it:
/// `DHHC-1:<transform>:<base64 of key ‖ CRC-32(key), little-endian>:`, with
/// `transform` 0 (none), 1 (SHA-256), 2 (SHA-384) or 3 (SHA-512).
pub fn dhchap_secret(transform: u8, key: &[u8]) -> String {
    let mut crc: u32 = !0;
    for &b in key {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut bytes = key.to_vec();
    bytes.extend_from_slice(&(!crc).to_le_bytes());
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    format!("DHHC-1:{transform:02}:{b64}:")
}

/// A running nvmet-tcp guest.
pub struct NvmetTarget {
    pub guest: RunningGuest,
    pub endpoint: Endpoint,
}

impl NvmetTarget {
    /// Waits until the target is configured and listening.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.guest.wait_for_mark("ready", timeout)
    }

    /// Tells the target to power off and returns its outcome.
    pub fn stop(self) -> Result<GuestOutcome> {
        self.guest.signal("stop")?;
        self.guest.wait()
    }
}

/// The fio initiator against every target of `targets` (name, endpoint),
/// each job run on each target in turn (see `guest/fio-compare.sh`).
pub fn compare_initiator(
    rig: &mut Rig,
    targets: &[(&str, &Endpoint)],
    jobs: &[FioJob],
    runtime: Duration,
    shape: GuestShape,
) -> Result<GuestConfig> {
    let per_job = runtime.as_secs() + 2;
    let runs = (jobs.len() * targets.len()) as u64;
    let limit = Duration::from_secs(90 + 4 * per_job * runs);
    let list: Vec<String> = targets
        .iter()
        .map(|(name, e)| format!("{name},{},{},{}", e.address, e.port, e.subnqn))
        .collect();
    Ok(rig
        .guest("bench", FIO_COMPARE_SCRIPT, shape)?
        .timeout(limit)
        .env("TARGETS", list.join(" "))
        .env("FIO_JOBS", fio::jobs_env(jobs))
        .env("FIO_RUNTIME", runtime.as_secs())
        .env("FIO_RAMP", 2))
}

/// Reads the results of target `target` that the compare script left.
pub fn collect_fio_of(
    outcome: &GuestOutcome,
    target: &str,
    jobs: &[FioJob],
) -> Result<Vec<FioResult>> {
    jobs.iter()
        .map(|job| {
            let path: PathBuf = outcome
                .share
                .join(format!("fio-{target}-{}.json", job.name));
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Fio {
                job: job.name.to_string(),
                reason: format!("reading {}: {e}", path.display()),
            })?;
            fio::parse(job.name, &text)
        })
        .collect()
}

/// Reads the fio results the bench script left in the share.
pub fn collect_fio(outcome: &GuestOutcome, jobs: &[FioJob]) -> Result<Vec<FioResult>> {
    jobs.iter()
        .map(|job| {
            let path: PathBuf = outcome.share.join(format!("fio-{}.json", job.name));
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Fio {
                job: job.name.to_string(),
                reason: format!("reading {}: {e}", path.display()),
            })?;
            fio::parse(job.name, &text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhchap_secret_has_the_nvme_cli_format() {
        // 32 bytes 0x00..0x1f; CRC-32 of them is 0x91267E8A.
        let key: Vec<u8> = (0u8..32).collect();
        let s = dhchap_secret(1, &key);
        assert_eq!(
            s,
            "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"
        );
    }
}
