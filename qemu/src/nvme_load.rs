//! `cargo tandem bench nvme`: a native NVMe/TCP load generator.
//!
//! It runs on this machine (no VM), speaks NVMe/TCP through the `nvme`
//! crate's sans-IO initiator over std sockets, one thread per I/O queue,
//! and costs a few microseconds of host CPU per I/O, so that the target,
//! not the initiator, bounds what it measures. Any NVMe/TCP target works:
//! tandem, Linux nvmet-tcp, SPDK, an appliance on the user's network.
//!
//! A job is a pattern (random or sequential; reads, writes or a mix), a
//! block size, N connections (I/O queues) × a queue depth, and either a
//! closed loop (every queue keeps `depth` commands outstanding) or an open
//! loop (commands start at a fixed total rate; latency then counts from
//! when each command was due, so a target that falls behind shows it).
//! Latencies go into an HDR histogram; with `verify`, every written block
//! carries its address and a tag, and every read checks them.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tandem_nvme::host::{HostEvent, Initiator};
use tandem_nvme::wire::{Completion, Status};

use crate::error::{Error, Result};

/// The default NVMe/TCP I/O port.
pub const DEFAULT_PORT: u16 = 4420;
/// How long a TCP connect and each setup command may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the run, outstanding commands get this long to complete (by
/// default; [`JobSpec::drain`]).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A blocked write to the target fails after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Identify data offsets (NVMe base spec).
const ID_CTRL_MDTS: usize = 77;
const ID_CTRL_CNTLID: usize = 78;
const ID_CTRL_IOCCSZ: usize = 1792;
const ID_NS_NSZE: usize = 0;
const ID_NS_FLBAS: usize = 26;
const ID_NS_LBAF: usize = 128;
/// Controller properties.
const PROP_CAP: u32 = 0x00;
const PROP_CSTS: u32 = 0x1C;
/// Set Features: Number of Queues.
const FEATURE_NUMBER_OF_QUEUES: u8 = 0x07;

/// Where the load goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub address: String,
    pub port: u16,
    pub subnqn: String,
    pub hostnqn: String,
    pub nsid: u32,
}

impl Target {
    pub fn new(address: &str, port: u16, subnqn: &str) -> Target {
        Target {
            address: address.to_string(),
            port,
            subnqn: subnqn.to_string(),
            hostnqn: default_hostnqn(),
            nsid: 1,
        }
    }

    /// `address:port (subnqn)`, for messages.
    pub fn describe(&self) -> String {
        format!("{}:{} ({})", self.address, self.port, self.subnqn)
    }
}

/// A host NQN unique to this machine and process.
pub fn default_hostnqn() -> String {
    let id = host_id();
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
        u16::from_be_bytes([id[4], id[5]]),
        u16::from_be_bytes([id[6], id[7]]),
        u16::from_be_bytes([id[8], id[9]]),
        u64::from_be_bytes([0, 0, id[10], id[11], id[12], id[13], id[14], id[15]]),
    )
}

fn host_id() -> [u8; 16] {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let mut seed = 0xcbf2_9ce4_8422_2325u64;
    for b in machine.trim().bytes() {
        seed = (seed ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = Rng(seed ^ std::process::id() as u64);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&rng.next().to_be_bytes());
    id[8..].copy_from_slice(&rng.next().to_be_bytes());
    id
}

/// What a job does with its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    RandRead,
    RandWrite,
    /// Random, `read_percent` % reads.
    RandMix {
        read_percent: u8,
    },
    SeqRead,
    SeqWrite,
}

impl Pattern {
    pub fn describe(self) -> String {
        match self {
            Pattern::RandRead => "random read".into(),
            Pattern::RandWrite => "random write".into(),
            Pattern::RandMix { read_percent } => {
                format!("random {read_percent}/{} read/write", 100 - read_percent)
            }
            Pattern::SeqRead => "sequential read".into(),
            Pattern::SeqWrite => "sequential write".into(),
        }
    }
    fn sequential(self) -> bool {
        matches!(self, Pattern::SeqRead | Pattern::SeqWrite)
    }
}

/// One job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub name: String,
    pub pattern: Pattern,
    pub block_size: u32,
    /// I/O queues, one TCP connection and one thread each.
    pub connections: u32,
    /// Commands outstanding per queue (closed loop), or at most (open loop).
    pub depth: u32,
    /// Open loop: total commands started per second.
    pub rate: Option<u64>,
    pub runtime: Duration,
    /// Run before measuring (not counted).
    pub ramp: Duration,
    pub verify: bool,
    /// Bytes at the start of the namespace the job works on (`None`: all).
    pub range: Option<u64>,
    /// After the run, how long outstanding commands get to complete before
    /// the job fails naming them.
    pub drain: Duration,
}

/// The named jobs, in the order a full run takes them (writes first, so
/// that reads find written blocks).
pub const JOB_NAMES: [&str; 6] = [
    "randwrite-4k",
    "randread-4k",
    "randrw-4k",
    "write-128k",
    "read-128k",
    "qd1-randread-4k",
];

impl JobSpec {
    /// A named job with the given shape; `qd1-*` jobs are always one
    /// connection at depth 1.
    pub fn named(name: &str, connections: u32, depth: u32) -> Option<JobSpec> {
        let (pattern, block_size) = match name {
            "randread-4k" | "qd1-randread-4k" => (Pattern::RandRead, 4096),
            "randwrite-4k" | "qd1-randwrite-4k" => (Pattern::RandWrite, 4096),
            "randrw-4k" => (Pattern::RandMix { read_percent: 70 }, 4096),
            "read-128k" => (Pattern::SeqRead, 128 << 10),
            "write-128k" => (Pattern::SeqWrite, 128 << 10),
            _ => return None,
        };
        let qd1 = name.starts_with("qd1-");
        Some(JobSpec {
            name: name.to_string(),
            pattern,
            block_size,
            connections: if qd1 { 1 } else { connections },
            depth: if qd1 { 1 } else { depth },
            rate: None,
            runtime: Duration::from_secs(10),
            ramp: Duration::from_secs(1),
            verify: false,
            range: None,
            drain: DRAIN_TIMEOUT,
        })
    }

    /// `4 KiB random read, 2 × QD32` and the loop.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {}, {} × QD{}",
            size_text(self.block_size as u64),
            self.pattern.describe(),
            self.connections,
            self.depth
        );
        match self.rate {
            Some(rate) => {
                let _ = write!(s, ", open loop at {rate} IOPS");
            }
            None => s.push_str(", closed loop"),
        }
        if self.verify {
            s.push_str(", verified");
        }
        s
    }
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (fraction of I/Os, µs): the latency CDF at 100 points.
    pub cdf: Vec<(f64, f64)>,
}

/// What one job measured.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub spec_name: String,
    pub description: String,
    pub connections: u32,
    pub depth: u32,
    pub rate: Option<u64>,
    pub block_size: u32,
    /// I/Os completed in the measured window.
    pub ios: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub latency: Latency,
    /// Commands that completed with an error status.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Blocks read back that did not hold what was written.
    pub verify_failures: u64,
    pub first_verify_failure: Option<String>,
    /// This process's CPU time over the job (ramp included), in seconds,
    /// and the job's wall time.
    pub generator_cpu_s: f64,
    pub wall_s: f64,
}

impl JobResult {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.seconds.max(1e-9)
    }
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.seconds.max(1e-9)
    }
    /// Generator CPU as a share of one core.
    pub fn generator_cpu_share(&self) -> f64 {
        self.generator_cpu_s / self.wall_s.max(1e-9)
    }
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.verify_failures == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "job": self.spec_name,
            "description": self.description,
            "connections": self.connections,
            "depth": self.depth,
            "rate": self.rate,
            "block_size": self.block_size,
            "ios": self.ios,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "iops": self.iops(),
            "mib_s": self.mib_s(),
            "latency_us": {
                "mean": self.latency.mean_us,
                "p50": self.latency.p50_us,
                "p90": self.latency.p90_us,
                "p99": self.latency.p99_us,
                "p99.9": self.latency.p999_us,
                "max": self.latency.max_us,
                "cdf": self.latency.cdf.iter().map(|(q, v)| [*q, *v]).collect::<Vec<_>>(),
            },
            "errors": self.errors,
            "first_error": self.first_error,
            "verify_failures": self.verify_failures,
            "first_verify_failure": self.first_verify_failure,
            "generator_cpu_s": self.generator_cpu_s,
            "wall_s": self.wall_s,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Option<JobResult> {
        let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
        let u = |k: &str| v.get(k).and_then(|x| x.as_u64());
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let l = v.get("latency_us")?;
        Some(JobResult {
            spec_name: s("job")?,
            description: s("description").unwrap_or_default(),
            connections: u("connections")? as u32,
            depth: u("depth")? as u32,
            rate: u("rate"),
            block_size: u("block_size")? as u32,
            ios: u("ios")?,
            bytes: u("bytes")?,
            seconds: f(v, "seconds")?,
            latency: Latency {
                mean_us: f(l, "mean")?,
                p50_us: f(l, "p50")?,
                p90_us: f(l, "p90")?,
                p99_us: f(l, "p99")?,
                p999_us: f(l, "p99.9")?,
                max_us: f(l, "max")?,
                cdf: l
                    .get("cdf")?
                    .as_array()?
                    .iter()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect(),
            },
            errors: u("errors")?,
            first_error: s("first_error"),
            verify_failures: u("verify_failures")?,
            first_verify_failure: s("first_verify_failure"),
            generator_cpu_s: f(v, "generator_cpu_s")?,
            wall_s: f(v, "wall_s")?,
        })
    }
}

/// A readable NVMe status, for messages.
pub fn describe_status(status: Status) -> String {
    let what = match (status.sct, status.sc) {
        (0, 0x01) => "invalid command opcode",
        (0, 0x02) => "invalid field in command",
        (0, 0x06) => "internal error",
        (0, 0x0B) => "invalid namespace",
        (0, 0x0C) => "command sequence error",
        (0, 0x22) => "transient transport error",
        (0, 0x80) => "LBA out of range",
        (0, 0x82) => "namespace not ready",
        (1, 0x80) => "Connect: incompatible format",
        (1, 0x81) => "Connect: controller busy",
        (1, 0x82) => "Connect: invalid parameters (subsystem NQN, controller ID or queue)",
        (1, 0x83) => "Connect: restart discovery",
        (1, 0x84) => "Connect: host not allowed (invalid host)",
        (2, _) => "media error",
        (3, 0x01) => "ANA persistent loss",
        (3, 0x02) => "ANA inaccessible (not the serving node)",
        (3, 0x03) => "ANA transition",
        _ => "",
    };
    let code = format!("SCT {} SC {:#04x}", status.sct, status.sc);
    if what.is_empty() {
        code
    } else {
        format!("{what} ({code})")
    }
}

// ------------------------------------------------------------- a queue

/// One NVMe/TCP connection: a socket and the initiator's state.
pub struct Queue {
    stream: TcpStream,
    host: Initiator,
    buf: Vec<u8>,
    target: String,
}

impl Queue {
    /// TCP connect and ICReq/ICResp.
    pub fn open(target: &Target) -> Result<Queue> {
        let unreachable = |source: io::Error| Error::TargetUnreachable {
            target: target.describe(),
            source,
        };
        let addrs: Vec<SocketAddr> = (target.address.as_str(), target.port)
            .to_socket_addrs()
            .map_err(unreachable)?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, SETUP_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| unreachable(last))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| Error::io("setting a socket timeout", e))?;
        let mut q = Queue {
            stream,
            host: Initiator::new(false, false),
            buf: vec![0; 256 << 10],
            target: target.describe(),
        };
        q.send("ICReq")?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        match q.next_event("ICReq", deadline)? {
            HostEvent::Initialized { .. } => Ok(q),
            other => Err(q.refused("ICReq", format!("answered with {other:?}"))),
        }
    }

    fn refused(&self, step: &str, reason: String) -> Error {
        Error::TargetRefused {
            target: self.target.clone(),
            step: step.to_string(),
            reason,
        }
    }

    fn send(&mut self, step: &str) -> Result<()> {
        let out = self.host.take_output();
        self.stream
            .write_all(&out)
            .map_err(|e| self.refused(step, format!("sending failed: {e}")))
    }

    /// The next event, blocking until `deadline`.
    fn next_event(&mut self, step: &str, deadline: Instant) -> Result<HostEvent> {
        loop {
            match self.host.poll_event() {
                Ok(Some(HostEvent::Terminated { fes, fei, .. })) => {
                    return Err(self.refused(
                        step,
                        format!("the target ended the connection (C2HTermReq FES {fes:#x}, FEI {fei:#x})"),
                    ));
                }
                Ok(Some(HostEvent::R2T { .. })) => {
                    self.send(step)?;
                    continue;
                }
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(self.refused(step, format!("malformed answer: {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.refused(
                    step,
                    format!("no answer within {} s", SETUP_TIMEOUT.as_secs()),
                ));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io("setting a socket timeout", e))?;
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(self.refused(step, "the target closed the connection".into())),
                Ok(n) => self.host.feed(&self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(self.refused(step, format!("connection failed: {e}"))),
            }
        }
    }

    /// Sends what was queued and waits for command `cid` to complete
    /// successfully.
    fn command(&mut self, step: &str, cid: u16) -> Result<(Completion, Vec<u8>)> {
        self.send(step)?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            if let HostEvent::Completion { cqe, data } = self.next_event(step, deadline)? {
                if cqe.cid != cid {
                    continue;
                }
                if cqe.status != Status::SUCCESS {
                    return Err(self.refused(step, describe_status(cqe.status)));
                }
                return Ok((cqe, data));
            }
        }
    }

    fn connect(&mut self, qid: u16, sqsize: u16, cntlid: u16, target: &Target) -> Result<u16> {
        let step = if qid == 0 {
            "the admin queue's Connect".to_string()
        } else {
            format!("I/O queue {qid}'s Connect")
        };
        let cid = self.host.connect(
            qid,
            sqsize,
            0,
            host_id(),
            cntlid,
            &target.subnqn,
            &target.hostnqn,
            false,
        );
        let (cqe, _) = self.command(&step, cid)?;
        Ok(cqe.result as u16)
    }
}

/// The controller as set up for a job: its admin queue and what it said.
pub struct Controller {
    admin: Queue,
    pub cntlid: u16,
    pub lba_size: u32,
    pub blocks: u64,
    /// Bytes of write data a command capsule may carry.
    pub in_capsule: u32,
    /// Largest transfer per command (MDTS), if limited.
    pub max_transfer: Option<u32>,
    /// Largest queue size (CAP.MQES + 1).
    pub max_queue_entries: u32,
}

impl Controller {
    /// Connects the admin queue, enables the controller and reads what a
    /// job needs, then asks for `queues` I/O queues.
    pub fn connect(target: &Target, queues: u32) -> Result<Controller> {
        let mut admin = Queue::open(target)?;
        let cntlid = admin.connect(0, 31, 0xFFFF, target)?;
        let cid = admin.host.property_get(PROP_CAP, true);
        let (cap, _) = admin.command("Property Get CAP", cid)?;
        let max_queue_entries = (cap.result & 0xFFFF) as u32 + 1;
        let cid = admin.host.enable();
        admin.command("enabling the controller (CC.EN)", cid)?;
        let ready_by = Instant::now() + SETUP_TIMEOUT;
        loop {
            let cid = admin.host.property_get(PROP_CSTS, false);
            let (csts, _) = admin.command("Property Get CSTS", cid)?;
            if csts.result & 1 == 1 {
                break;
            }
            if Instant::now() > ready_by {
                return Err(admin.refused("enabling the controller", "CSTS.RDY stayed 0".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let cid = admin.host.identify(1, 0, 0);
        let (_, ctrl) = admin.command("Identify Controller", cid)?;
        if ctrl.len() < 4096 {
            return Err(admin.refused("Identify Controller", "short data".into()));
        }
        let mdts = ctrl[ID_CTRL_MDTS];
        let max_transfer = (mdts != 0).then(|| 4096u32.saturating_mul(1 << mdts.min(20)));
        let ioccsz =
            u32::from_le_bytes(ctrl[ID_CTRL_IOCCSZ..ID_CTRL_IOCCSZ + 4].try_into().unwrap());
        let in_capsule = (ioccsz * 16).saturating_sub(64);
        let cntlid = if cntlid != 0 {
            cntlid
        } else {
            u16::from_le_bytes([ctrl[ID_CTRL_CNTLID], ctrl[ID_CTRL_CNTLID + 1]])
        };
        let cid = admin.host.identify(0, target.nsid, 0);
        let (_, ns) = admin.command(&format!("Identify Namespace {}", target.nsid), cid)?;
        let blocks = u64::from_le_bytes(ns[ID_NS_NSZE..ID_NS_NSZE + 8].try_into().unwrap());
        if blocks == 0 {
            return Err(admin.refused(
                "Identify Namespace",
                format!("namespace {} does not exist or is empty", target.nsid),
            ));
        }
        let format = (ns[ID_NS_FLBAS] & 0x0F) as usize;
        let lbads = ns[ID_NS_LBAF + 4 * format + 2];
        if !(9..=16).contains(&lbads) {
            return Err(admin.refused(
                "Identify Namespace",
                format!("unexpected LBA data size 2^{lbads}"),
            ));
        }
        let want = queues.saturating_sub(1);
        let cid = admin
            .host
            .set_features(FEATURE_NUMBER_OF_QUEUES, want | (want << 16));
        let (nq, _) = admin.command("Set Features Number of Queues", cid)?;
        let granted = ((nq.result & 0xFFFF) as u32).min(((nq.result >> 16) & 0xFFFF) as u32) + 1;
        if granted < queues {
            return Err(admin.refused(
                "Set Features Number of Queues",
                format!("granted {granted} I/O queues, {queues} asked for"),
            ));
        }
        Ok(Controller {
            admin,
            cntlid,
            lba_size: 1 << lbads,
            blocks,
            in_capsule,
            max_transfer,
            max_queue_entries,
        })
    }

    /// Opens and connects I/O queue `qid` with room for `depth` commands.
    pub fn io_queue(&self, target: &Target, qid: u16, depth: u32) -> Result<Queue> {
        let mut q = Queue::open(target)?;
        q.connect(qid, depth as u16, self.cntlid, target)?;
        Ok(q)
    }

    /// A clean goodbye: CC.SHN normal shutdown (errors ignored: the
    /// connection closes anyway).
    pub fn shutdown(mut self) {
        let cid = self
            .admin
            .host
            .property_set(0x14, (6 << 16) | (4 << 20) | 1 | (1 << 14));
        let _ = self.admin.command("shutdown", cid);
    }
}

// ------------------------------------------------------------ data

/// A small, fast generator (xorshift64*): offsets and block contents.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// Fills one logical block: its LBA, a tag, then words derived from both.
fn fill_block(block: &mut [u8], lba: u64, tag: u64) {
    block[..8].copy_from_slice(&lba.to_le_bytes());
    block[8..16].copy_from_slice(&tag.to_le_bytes());
    let mut r = Rng(lba.rotate_left(32) ^ tag ^ 0x9E37_79B9_7F4A_7C15);
    for word in block[16..].chunks_exact_mut(8) {
        word.copy_from_slice(&r.next().to_le_bytes());
    }
}

/// Checks one logical block read back. `expected`: the tag last written
/// there by this run, if any. A never-written block may read as zeros.
pub fn check_block(
    block: &[u8],
    lba: u64,
    expected: Option<u64>,
) -> std::result::Result<(), String> {
    if expected.is_none() && block.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let found_lba = u64::from_le_bytes(block[..8].try_into().unwrap());
    let tag = u64::from_le_bytes(block[8..16].try_into().unwrap());
    if found_lba != lba {
        return Err(format!("LBA {lba} holds the data of LBA {found_lba}"));
    }
    if let Some(want) = expected {
        if tag != want {
            return Err(format!(
                "LBA {lba} holds write #{tag}, not the last one written (#{want})"
            ));
        }
    }
    let mut good = vec![0u8; block.len()];
    fill_block(&mut good, lba, tag);
    if good != block {
        let at = good
            .iter()
            .zip(block)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "LBA {lba} (write #{tag}) is corrupt from byte {at}"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ a worker

/// Counters every worker adds to, for the progress line.
#[derive(Default)]
struct Progress {
    ios: AtomicU64,
    bytes: AtomicU64,
    latency_ns: AtomicU64,
    errors: AtomicU64,
}

struct InFlight {
    started: Instant,
    unit: u64,
    read: bool,
    tag: u64,
}

/// What one worker measured.
struct WorkerResult {
    histogram: Histogram<u64>,
    ios: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    verify_failures: u64,
    first_verify_failure: Option<String>,
}

/// The shape a worker works to.
struct Plan {
    nsid: u32,
    lba_size: u32,
    /// Logical blocks per I/O.
    unit_blocks: u64,
    /// This worker's units: [first, first + count).
    first_unit: u64,
    units: u64,
    /// Random offsets over all units of the job (no verify), not only this
    /// worker's share.
    all_units: u64,
    in_capsule: bool,
    /// Open loop: nanoseconds between this worker's commands.
    interval_ns: Option<u64>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

fn run_worker(
    mut q: Queue,
    spec: &JobSpec,
    plan: Plan,
    seed: u64,
    progress: &Progress,
    abort: &AtomicBool,
) -> Result<WorkerResult> {
    q.stream
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting a socket non-blocking", e))?;
    let mut rng = Rng(seed);
    let block_bytes = plan.unit_blocks as usize * plan.lba_size as usize;
    let mut inflight: HashMap<u16, InFlight> = HashMap::with_capacity(spec.depth as usize * 2);
    let mut busy_units: HashSet<u64> = HashSet::new();
    let mut written: HashMap<u64, u64> = HashMap::new();
    let mut fixed = vec![0u8; block_bytes];
    for (i, b) in fixed.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) | 1;
    }
    let mut seq_next = 0u64;
    let mut tag = seed << 20;
    let mut next_due = plan
        .interval_ns
        .map(|ns| plan.start + Duration::from_nanos(rng.below(ns.max(1))));
    let mut out: Vec<u8> = Vec::new();
    let mut out_at = 0usize;
    let mut r = WorkerResult {
        histogram: Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
            .expect("valid histogram bounds"),
        ios: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        verify_failures: 0,
        first_verify_failure: None,
    };
    let drain_deadline = plan.end + spec.drain;
    let fd = q.stream.as_raw_fd();
    // What the socket carried, for the message when commands never finish.
    let mut bytes_in = 0u64;
    let mut last_in: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if abort.load(Ordering::Relaxed) {
            break;
        }
        // Start what may start.
        while now < plan.end && inflight.len() < spec.depth as usize {
            let started = match next_due {
                Some(due) if due > now => break,
                Some(due) => {
                    next_due = Some(due + Duration::from_nanos(plan.interval_ns.unwrap_or(0)));
                    due
                }
                None => now,
            };
            let read = match spec.pattern {
                Pattern::RandRead | Pattern::SeqRead => true,
                Pattern::RandWrite | Pattern::SeqWrite => false,
                Pattern::RandMix { read_percent } => rng.below(100) < read_percent as u64,
            };
            let unit = if spec.pattern.sequential() {
                let u = plan.first_unit + seq_next % plan.units;
                seq_next += 1;
                u
            } else if spec.verify {
                // A unit with a command in flight is not touched again until
                // it completes, so that what a read finds is well defined.
                let mut u;
                let mut tries = 0;
                loop {
                    u = plan.first_unit + rng.below(plan.units);
                    tries += 1;
                    if !busy_units.contains(&u) || tries > 64 {
                        break;
                    }
                }
                u
            } else {
                rng.below(plan.all_units)
            };
            if spec.verify && !busy_units.insert(unit) {
                // Everything nearby is busy: try again after a completion.
                break;
            }
            let slba = unit * plan.unit_blocks;
            let cid = if read {
                q.host
                    .read(plan.nsid, slba, plan.unit_blocks as u32, plan.lba_size)
            } else {
                let data = if spec.verify {
                    tag += 1;
                    let mut data = vec![0u8; block_bytes];
                    for (i, block) in data.chunks_exact_mut(plan.lba_size as usize).enumerate() {
                        fill_block(block, slba + i as u64, tag);
                    }
                    data
                } else {
                    fixed.clone()
                };
                q.host
                    .write(plan.nsid, slba, data, plan.lba_size, plan.in_capsule)
            };
            inflight.insert(
                cid,
                InFlight {
                    started,
                    unit,
                    read,
                    tag,
                },
            );
        }
        if now >= plan.end && inflight.is_empty() {
            break;
        }
        if now >= drain_deadline {
            return Err(Error::TargetFailed {
                target: q.target.clone(),
                reason: format!(
                    "{} commands still outstanding {:.1} s after the run ended: {}",
                    inflight.len(),
                    spec.drain.as_secs_f64(),
                    stall_report(
                        &q,
                        &inflight,
                        &plan,
                        now,
                        bytes_in,
                        last_in,
                        out.len() - out_at
                    )
                ),
            });
        }
        // Send.
        if q.host.has_output() {
            if out_at == out.len() {
                out = q.host.take_output();
                out_at = 0;
            } else {
                out.extend_from_slice(&q.host.take_output());
            }
        }
        while out_at < out.len() {
            match q.stream.write(&out[out_at..]) {
                Ok(0) => break,
                Ok(n) => out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::TargetFailed {
                        target: q.target.clone(),
                        reason: format!("sending failed: {e}"),
                    });
                }
            }
        }
        // Wait for the socket or the next due command.
        let now = Instant::now();
        let mut wait = if now < plan.end {
            match next_due {
                Some(due) if inflight.len() < spec.depth as usize => {
                    due.saturating_duration_since(now)
                }
                _ => plan.end - now,
            }
        } else {
            drain_deadline.saturating_duration_since(now)
        };
        wait = wait.min(Duration::from_millis(100));
        let readable = poll(fd, out_at < out.len(), wait);
        if !readable {
            continue;
        }
        // Receive and handle everything there is.
        loop {
            match q.stream.read(&mut q.buf) {
                Ok(0) => {
                    return Err(Error::TargetFailed {
                        target: q.target.clone(),
                        reason: format!(
                            "the target closed the connection with {} commands outstanding",
                            inflight.len()
                        ),
                    });
                }
                Ok(n) => {
                    q.host.feed(&q.buf[..n]);
                    bytes_in += n as u64;
                    last_in = Some(Instant::now());
                    if n < q.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::TargetFailed {
                        target: q.target.clone(),
                        reason: format!("connection failed: {e}"),
                    });
                }
            }
        }
        loop {
            let event = q.host.poll_event().map_err(|e| Error::TargetFailed {
                target: q.target.clone(),
                reason: format!("malformed PDU from the target: {e}"),
            })?;
            let Some(event) = event else { break };
            let (cqe, data) = match event {
                HostEvent::Completion { cqe, data } => (cqe, data),
                HostEvent::Terminated { fes, fei, .. } => {
                    return Err(Error::TargetFailed {
                        target: q.target.clone(),
                        reason: format!(
                            "the target ended the connection (C2HTermReq FES {fes:#x}, FEI {fei:#x})"
                        ),
                    });
                }
                // The initiator queued the H2CData already.
                HostEvent::R2T { .. } | HostEvent::Initialized { .. } => continue,
            };
            let Some(io) = inflight.remove(&cqe.cid) else {
                continue;
            };
            let done = Instant::now();
            if spec.verify {
                busy_units.remove(&io.unit);
            }
            let slba = io.unit * plan.unit_blocks;
            if cqe.status != Status::SUCCESS {
                r.errors += 1;
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if r.first_error.is_none() {
                    r.first_error = Some(format!(
                        "{} of LBA {slba}: {}",
                        if io.read { "read" } else { "write" },
                        describe_status(cqe.status)
                    ));
                }
                continue;
            }
            if spec.verify {
                if io.read {
                    let bad = if data.len() != block_bytes {
                        Some(format!(
                            "read of LBA {slba}: {} bytes, {block_bytes} asked for",
                            data.len()
                        ))
                    } else {
                        data.chunks_exact(plan.lba_size as usize)
                            .enumerate()
                            .find_map(|(i, block)| {
                                check_block(block, slba + i as u64, written.get(&io.unit).copied())
                                    .err()
                            })
                    };
                    if let Some(bad) = bad {
                        r.verify_failures += 1;
                        r.first_verify_failure.get_or_insert(bad);
                    }
                } else {
                    written.insert(io.unit, io.tag);
                }
            }
            if done >= plan.measure_from && done <= plan.end {
                let ns = done.duration_since(io.started).as_nanos() as u64;
                let _ = r.histogram.record(ns.clamp(1_000, 600_000_000_000));
                r.ios += 1;
                r.bytes += block_bytes as u64;
                progress.ios.fetch_add(1, Ordering::Relaxed);
                progress
                    .bytes
                    .fetch_add(block_bytes as u64, Ordering::Relaxed);
                progress.latency_ns.fetch_add(ns, Ordering::Relaxed);
            }
        }
    }
    Ok(r)
}

use crate::sys::poll;

/// What a worker knows about commands that never finished: each one's age
/// and how much of a read's data arrived, and what the socket carried (so
/// that a stalled target, a stalled connection and a lost completion tell
/// themselves apart).
fn stall_report(
    q: &Queue,
    inflight: &HashMap<u16, InFlight>,
    plan: &Plan,
    now: Instant,
    bytes_in: u64,
    last_in: Option<Instant>,
    unsent: usize,
) -> String {
    let mut commands: Vec<(&u16, &InFlight)> = inflight.iter().collect();
    commands.sort_by_key(|(cid, io)| (io.started, io.unit, **cid));
    let block_bytes = plan.unit_blocks as usize * plan.lba_size as usize;
    let list: Vec<String> = commands
        .iter()
        .map(|(cid, io)| {
            let slba = io.unit * plan.unit_blocks;
            let age = now.duration_since(io.started).as_secs_f64();
            if io.read {
                format!(
                    "read of LBA {slba} (cid {cid}, {age:.1} s, {} of {block_bytes} data bytes arrived)",
                    q.host.data_received(**cid)
                )
            } else {
                format!("write of LBA {slba} (cid {cid}, {age:.1} s)")
            }
        })
        .collect();
    let last = match last_in {
        Some(t) => format!("the last {:.1} s ago", now.duration_since(t).as_secs_f64()),
        None => "none since the run started".into(),
    };
    format!(
        "{}; the connection received {bytes_in} bytes, {last} ({} bytes of a PDU pending), and has {unsent} bytes unsent",
        list.join(", "),
        q.host.undecoded()
    )
}

// ------------------------------------------------------------ a job

/// Runs one job against `target`: connects, loads, disconnects. Progress
/// lines (one a second) go to `progress_out` when given.
pub fn run_job<W: Write + ?Sized>(
    target: &Target,
    spec: &JobSpec,
    mut progress_out: Option<&mut W>,
) -> Result<JobResult> {
    if spec.connections == 0 || spec.depth == 0 {
        return Err(Error::Usage(
            "connections and depth must be at least 1".into(),
        ));
    }
    if spec.connections > 64 || spec.depth > 1024 {
        return Err(Error::Usage("at most 64 connections and depth 1024".into()));
    }
    let ctrl = Controller::connect(target, spec.connections)?;
    if spec.depth + 1 > ctrl.max_queue_entries {
        return Err(Error::Usage(format!(
            "the target's queues hold at most {} commands (CAP.MQES); --depth {} is too deep",
            ctrl.max_queue_entries - 1,
            spec.depth
        )));
    }
    if spec.block_size % ctrl.lba_size != 0 {
        return Err(Error::Usage(format!(
            "block size {} is not a multiple of the namespace's {}-byte blocks",
            spec.block_size, ctrl.lba_size
        )));
    }
    if let Some(max) = ctrl.max_transfer {
        if spec.block_size > max {
            return Err(Error::Usage(format!(
                "block size {} exceeds the target's largest transfer ({max} bytes, MDTS)",
                spec.block_size
            )));
        }
    }
    let unit_blocks = (spec.block_size / ctrl.lba_size) as u64;
    let range_blocks = spec
        .range
        .map_or(ctrl.blocks, |r| (r / ctrl.lba_size as u64).min(ctrl.blocks));
    let all_units = range_blocks / unit_blocks;
    let per_worker = all_units / spec.connections as u64;
    if per_worker < spec.depth as u64 * 2 {
        return Err(Error::Usage(format!(
            "the range ({} blocks of {} bytes) is too small for {} × QD{} at {} bytes",
            range_blocks, ctrl.lba_size, spec.connections, spec.depth, spec.block_size
        )));
    }
    let mut queues = Vec::new();
    for qid in 1..=spec.connections {
        queues.push(ctrl.io_queue(target, qid as u16, spec.depth)?);
    }

    let cpu_before = crate::bench::cpu_ticks(std::process::id()).unwrap_or(0);
    let start = Instant::now();
    let measure_from = start + spec.ramp;
    let end = measure_from + spec.runtime;
    let progress = Progress::default();
    let abort = AtomicBool::new(false);
    let interval_ns = spec
        .rate
        .map(|rate| 1_000_000_000 * spec.connections as u64 / rate.max(1));
    let in_capsule = spec.block_size <= ctrl.in_capsule;
    let results: Vec<Result<WorkerResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let plan = Plan {
                    nsid: target.nsid,
                    lba_size: ctrl.lba_size,
                    unit_blocks,
                    first_unit: i as u64 * per_worker,
                    units: per_worker,
                    all_units,
                    in_capsule,
                    interval_ns,
                    start,
                    measure_from,
                    end,
                };
                let (progress, abort) = (&progress, &abort);
                let seed = 0x5EED_0000 + i as u64 * 7919 + start.elapsed().subsec_nanos() as u64;
                s.spawn(move || {
                    let r = run_worker(q, spec, plan, seed, progress, abort);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        report_progress(
            &progress,
            &abort,
            start,
            measure_from,
            end,
            progress_out.as_deref_mut(),
            &handles,
        );
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Usage("a worker panicked".into())))
            })
            .collect()
    });
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_after = crate::bench::cpu_ticks(std::process::id()).unwrap_or(0);
    ctrl.shutdown();

    let mut histogram = Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
        .expect("valid histogram bounds");
    let mut result = JobResult {
        spec_name: spec.name.clone(),
        description: spec.describe(),
        connections: spec.connections,
        depth: spec.depth,
        rate: spec.rate,
        block_size: spec.block_size,
        ios: 0,
        bytes: 0,
        seconds: spec.runtime.as_secs_f64(),
        latency: Latency::default(),
        errors: 0,
        first_error: None,
        verify_failures: 0,
        first_verify_failure: None,
        generator_cpu_s: cpu_after.saturating_sub(cpu_before) as f64
            / crate::bench::clock_ticks_per_second(),
        wall_s,
    };
    for r in results {
        let r = r?;
        histogram.add(&r.histogram).expect("same bounds");
        result.ios += r.ios;
        result.bytes += r.bytes;
        result.errors += r.errors;
        result.verify_failures += r.verify_failures;
        if result.first_error.is_none() {
            result.first_error = r.first_error;
        }
        if result.first_verify_failure.is_none() {
            result.first_verify_failure = r.first_verify_failure;
        }
    }
    result.latency = latency_of(&histogram);
    Ok(result)
}

fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        cdf: (0..=100)
            .map(|i| {
                // Denser towards the tail: 0 … 0.99, then 0.999, 0.9999.
                let q = match i {
                    0..=98 => i as f64 / 100.0,
                    99 => 0.99,
                    100 => 0.999,
                    _ => 1.0,
                };
                (q, us(h.value_at_quantile(q)))
            })
            .chain([(1.0, us(h.max()))])
            .collect(),
    }
}

/// Prints a progress line a second until every worker is done.
fn report_progress<T, W: Write + ?Sized>(
    progress: &Progress,
    abort: &AtomicBool,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    mut out: Option<&mut W>,
    handles: &[std::thread::ScopedJoinHandle<'_, T>],
) {
    let mut last = (0u64, 0u64, 0u64);
    let mut tick = start + Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) {
        let now = Instant::now();
        if now < tick {
            std::thread::sleep((tick - now).min(Duration::from_millis(50)));
            continue;
        }
        tick += Duration::from_secs(1);
        let ios = progress.ios.load(Ordering::Relaxed);
        let bytes = progress.bytes.load(Ordering::Relaxed);
        let lat = progress.latency_ns.load(Ordering::Relaxed);
        let (dios, dbytes, dlat) = (ios - last.0, bytes - last.1, lat - last.2);
        last = (ios, bytes, lat);
        let Some(out) = out.as_deref_mut() else {
            continue;
        };
        let phase = if now < measure_from {
            "ramp"
        } else if now <= end + Duration::from_millis(500) {
            "run "
        } else {
            "drain"
        };
        let mean = if dios > 0 {
            dlat as f64 / dios as f64 / 1000.0
        } else {
            0.0
        };
        let errors = progress.errors.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "  {:>4.0} s {phase} {dios:>8} IOPS {:>8.1} MiB/s  mean {mean:>8.0} µs{}",
            (now - start).as_secs_f64(),
            dbytes as f64 / (1 << 20) as f64,
            if errors > 0 {
                format!("  errors {errors}")
            } else {
                String::new()
            }
        );
        if abort.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// Runs every job `args` asks for, in order, with a header and progress
/// lines to `log` (unless `--quiet`); writes `--json` if asked.
pub fn run_all(args: &crate::cli::NvmeBenchArgs, log: &mut dyn Write) -> Result<Vec<JobResult>> {
    let mut results = Vec::new();
    let specs = args.job_specs();
    for (i, spec) in specs.iter().enumerate() {
        let _ = writeln!(
            log,
            "[{}/{}] {}: {} against {}, {} s + {} s ramp",
            i + 1,
            specs.len(),
            spec.name,
            spec.describe(),
            args.target.describe(),
            spec.runtime.as_secs(),
            spec.ramp.as_secs()
        );
        let out = if args.quiet { None } else { Some(&mut *log) };
        let r = run_job(&args.target, spec, out)?;
        let _ = writeln!(
            log,
            "    {:.0} IOPS, {:.1} MiB/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs; generator CPU {:.0} % of a core",
            r.iops(),
            r.mib_s(),
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.generator_cpu_share() * 100.0
        );
        results.push(r);
        if let Some(path) = &args.json {
            // Rewritten after every job, so a long sweep leaves what it did.
            let json = serde_json::Value::Array(results.iter().map(JobResult::to_json).collect());
            std::fs::write(
                path,
                serde_json::to_string_pretty(&json).unwrap_or_default(),
            )
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
    }
    Ok(results)
}

/// Reads what `--json` wrote.
pub fn read_json(text: &str) -> Option<Vec<JobResult>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_array()?.iter().map(JobResult::from_json).collect()
}

/// The result table (markdown) for a list of results.
pub fn render_table(results: &[JobResult]) -> String {
    let mut s = String::from(
        "| job | conns × QD | IOPS | MiB/s | mean µs | p50 µs | p99 µs | p99.9 µs | max µs | errors | generator CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let l = &r.latency;
        let _ = writeln!(
            s,
            "| {} | {} × {}{} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {}{} | {:.0} % |",
            r.spec_name,
            r.connections,
            r.depth,
            r.rate.map(|x| format!(" @ {x}/s")).unwrap_or_default(),
            r.iops(),
            r.mib_s(),
            l.mean_us,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            r.errors,
            if r.verify_failures > 0 {
                format!(", {} verify", r.verify_failures)
            } else {
                String::new()
            },
            r.generator_cpu_share() * 100.0
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_check_their_address_tag_and_contents() {
        let mut b = vec![0u8; 512];
        assert_eq!(check_block(&b, 7, None), Ok(()), "never written");
        assert!(
            check_block(&b, 7, Some(3)).is_err(),
            "written but reads zeros"
        );
        fill_block(&mut b, 7, 3);
        assert_eq!(check_block(&b, 7, Some(3)), Ok(()));
        assert_eq!(check_block(&b, 7, None), Ok(()));
        assert!(
            check_block(&b, 8, None)
                .unwrap_err()
                .contains("data of LBA 7")
        );
        assert!(
            check_block(&b, 7, Some(4))
                .unwrap_err()
                .contains("not the last")
        );
        b[300] ^= 1;
        assert!(
            check_block(&b, 7, Some(3))
                .unwrap_err()
                .contains("corrupt from byte 300")
        );
    }

    #[test]
    fn named_jobs() {
        for name in JOB_NAMES {
            let j = JobSpec::named(name, 2, 16).unwrap();
            assert_eq!(j.block_size % 4096, 0);
        }
        let qd1 = JobSpec::named("qd1-randread-4k", 4, 32).unwrap();
        assert_eq!((qd1.connections, qd1.depth), (1, 1));
        let mix = JobSpec::named("randrw-4k", 2, 16).unwrap();
        assert_eq!(mix.pattern, Pattern::RandMix { read_percent: 70 });
        assert_eq!(
            mix.describe(),
            "4 KiB random 70/30 read/write, 2 × QD16, closed loop"
        );
        assert!(JobSpec::named("nope", 1, 1).is_none());
    }

    #[test]
    fn results_survive_json() {
        let r = JobResult {
            spec_name: "randread-4k".into(),
            description: "d".into(),
            connections: 2,
            depth: 16,
            rate: Some(1000),
            block_size: 4096,
            ios: 1000,
            bytes: 4096 * 1000,
            seconds: 2.0,
            latency: Latency {
                mean_us: 1.0,
                p50_us: 2.0,
                p90_us: 3.0,
                p99_us: 4.0,
                p999_us: 5.0,
                max_us: 6.0,
                cdf: vec![(0.5, 2.0), (1.0, 6.0)],
            },
            errors: 0,
            first_error: None,
            verify_failures: 1,
            first_verify_failure: Some("x".into()),
            generator_cpu_s: 0.5,
            wall_s: 3.0,
        };
        assert_eq!(JobResult::from_json(&r.to_json()), Some(r.clone()));
        assert_eq!(r.iops(), 500.0);
        assert!(!r.ok());
        assert!(render_table(&[r]).contains("| randread-4k | 2 × 16 @ 1000/s | 500 |"));
    }

    #[test]
    fn statuses_read_well() {
        let refused = Status {
            sct: 1,
            sc: 0x84,
            dnr: true,
        };
        assert!(describe_status(refused).contains("host not allowed"));
        assert_eq!(
            describe_status(Status {
                sct: 7,
                sc: 1,
                dnr: false
            }),
            "SCT 7 SC 0x01"
        );
    }

    #[test]
    fn host_nqns_are_uuid_nqns() {
        let nqn = default_hostnqn();
        assert!(nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert_eq!(nqn.len(), "nqn.2014-08.org.nvmexpress:uuid:".len() + 36);
    }
}
