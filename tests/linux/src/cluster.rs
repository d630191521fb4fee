//! The HA pair against the stock Linux NVMe/TCP host: a [`Cluster`] of
//! tandem nodes `a` and `b` and the witness, booted from the image under
//! QEMU (TCG), and a Linux guest connected to both data nodes (one subsystem
//! NQN, two portals, one namespace head) that runs fio (random writes with
//! crc32c verify) and `ackcheck`, the acknowledged-write checker
//! (`tests/linux/ha/ackcheck.rs`), while a test injects faults. The tests
//! live in `tests/linux/tests/ha*.rs`; this is their harness.
//!
//! Segments (bridges in a network namespace of the test, a tap per NIC); the
//! nodes' command lines come from [`PairLayout`] with a host path segment:
//!
//! | segment | a | b | witness | Linux host |
//! |---|---|---|---|---|
//! | front-end, heartbeats (net0) 10.77.0.0/24 | .1 | .2 | .3 | — |
//! | replication link (net1) 10.78.0.0/24 | .1 | .2 | .3 | — |
//! | host path (net2) 10.79.0.0/24 | .1 | .2 | — | .20 |
//!
//! The host's path is a segment of its own, so that a node can be cut off
//! from its peer and the witness (net0 and net1 down) while the host still
//! reaches it.
//!
//! A test usually ends with [`Cluster::finish`]: the workload stops, fio
//! must report no error, ackcheck reads every block back (no acknowledged
//! write lost, no stale read seen during the run), the role lines of every
//! boot show at most one primary per epoch, exactly one node serves, and
//! after a switchover to the other node ackcheck reads everything back there
//! too.
//!
//! Needs root (namespace, taps) and QEMU; builds the Linux guest and the
//! tandem image on first use; [`lock`] returns `None` (with a notice)
//! without root. Tests take turns through [`lock`]: each boots four VMs on a
//! machine that may have two cores. `TANDEM_HA_LOG=debug` boots the nodes
//! with `log=debug`; consoles, QEMU logs, the guest's share (fio latency
//! log, ackcheck log) stay in `target/linux-guest/runs/ha-*`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_qemu::{Accel, ConsoleClient, Node, NodeName, PairLayout, Subnet, VmSpec};

use crate::image::guest_dir;
use crate::scenario::create_disk;
use crate::tandem::tandem_image;
use crate::{GuestConfig, GuestImage, NetBackend, Netns, Release, RunningGuest};

/// The pair's subsystem NQN.
pub const NQN: &str = "nqn.2026-11.io.tandem.test:ha";
/// The Linux host's NQN.
pub const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7a1c2e3d-4b5a-4697-8a7b-6c5d4e3f2a21";
/// Timing for the fault tests: slack for TCG on a loaded two-core machine
/// (a starved VM must not flap while the tests check roles).
pub const HA_TIMING: &str = "hb_interval=100 hb_timeout=2000 lease=1500";
/// The benchmarks measure the image's default timing (hb_interval 50 ms,
/// hb_timeout 500 ms, lease 400 ms); they report every role change, so a
/// flap would show.
pub const DEFAULT_TIMING: &str = "";
pub const DISK_BYTES: u64 = 128 << 20;
pub const REGION_BYTES: u64 = 64 << 10;
/// fio writes the first 32 MiB, ackcheck 2048 blocks from 40 MiB on.
pub const CK_OFFSET: u64 = 40 << 20;
pub const CK_BLOCKS: u64 = 2048;
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A role change after a fault (failure timeout, promise horizon, a busy
/// machine).
pub const ROLE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the workload runs between steps.
pub const HOLD: Duration = Duration::from_secs(6);

/// The data area of a disk of `disk_bytes` with 64 KiB regions: the disk
/// less the HA metadata at its end (`docs/on-disk-format.md`, Layout).
pub fn data_area_bytes(disk_bytes: u64) -> u64 {
    let regions_upper = disk_bytes.div_ceil(REGION_BYTES);
    let bitmap_blocks = regions_upper.div_ceil(32512).max(1);
    let metadata = (2 + bitmap_blocks) * 4096;
    disk_bytes.saturating_sub(metadata) / 4096 * 4096
}

/// One test at a time: each boots four VMs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Wall-clock time in ms since the Unix epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `tandem: role <role> epoch <N> reason <text>` as printed by a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleLine {
    pub role: String,
    pub epoch: u64,
    pub reason: String,
}

/// The role lines of a console log, in order.
pub fn role_lines(console: &str) -> Vec<RoleLine> {
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("tandem: role ")? + "tandem: role ".len()..];
            let mut words = rest.split_whitespace();
            let role = words.next()?.to_string();
            (words.next()? == "epoch").then_some(())?;
            let epoch = words.next()?.parse().ok()?;
            (words.next()? == "reason").then_some(())?;
            let reason = words.next().unwrap_or("").to_string();
            Some(RoleLine {
                role,
                epoch,
                reason,
            })
        })
        .collect()
}

/// Largest gap between consecutive completion times (ms) inside
/// `[from, to]`, counting from the last completion before `from`.
pub fn max_gap(times: &[u64], from: u64, to: u64) -> Option<u64> {
    let start = times.partition_point(|t| *t < from);
    let first = start.saturating_sub(1);
    let end = times.partition_point(|t| *t <= to);
    let window = times.get(first..end)?;
    window.windows(2).map(|w| w[1] - w[0]).max()
}

/// The `<node> role:… epoch:… disk:… ana:…` line of a node's own status.
pub fn own_line(status: &str, name: Name) -> String {
    let prefix = format!("{} role:", name.as_str());
    status
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or("")
        .to_string()
}

/// A member of the trio (the tests' short spelling of [`NodeName`], with
/// the peer of a data node as a plain value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    A,
    B,
    Witness,
}

impl Name {
    pub const ALL: [Name; 3] = [Name::A, Name::B, Name::Witness];

    pub fn node(self) -> NodeName {
        match self {
            Name::A => NodeName::A,
            Name::B => NodeName::B,
            Name::Witness => NodeName::Witness,
        }
    }
    pub fn as_str(self) -> &'static str {
        self.node().as_str()
    }
    /// The first letter of the member's taps (`a0`, `b1`, `w0`, ...).
    fn tap_prefix(self) -> &'static str {
        match self {
            Name::A => "a",
            Name::B => "b",
            Name::Witness => "w",
        }
    }
    /// The other data node (a for the witness).
    pub fn peer(self) -> Name {
        match self {
            Name::A => Name::B,
            _ => Name::A,
        }
    }
}

/// One tandem VM of the trio, across its boots.
pub struct Member {
    pub name: Name,
    pub spec: VmSpec,
    /// The running QEMU; `None` once killed.
    pub node: Option<Node>,
    console: Option<ConsoleClient>,
    /// Console logs of earlier boots (a restart starts a fresh log).
    pub earlier_boots: Vec<String>,
}

impl Member {
    /// The console log of the current boot.
    pub fn log(&self) -> String {
        self.node
            .as_ref()
            .map(|n| n.console_log())
            .unwrap_or_default()
    }

    /// Role lines of all boots, oldest first, with the boot number.
    pub fn all_roles(&self) -> Vec<(usize, RoleLine)> {
        let mut all = Vec::new();
        for (boot, log) in self.earlier_boots.iter().enumerate() {
            all.extend(role_lines(log).into_iter().map(|r| (boot, r)));
        }
        let boot = self.earlier_boots.len();
        all.extend(role_lines(&self.log()).into_iter().map(|r| (boot, r)));
        all
    }

    pub fn tail(&self, lines: usize) -> String {
        tandem_qemu::console::log_tail(&self.spec.console_log(), lines)
    }
}

/// A fault or step injected by the test, with its wall-clock time.
pub struct Event {
    pub what: String,
    pub at_ms: u64,
    /// The guest's clock offset as last measured ([`Cluster::measure_clock`]):
    /// the guest's clock drifts under TCG, a long run measures it again.
    pub clock_offset_ms: i64,
}

/// The trio, its segments and the Linux host.
pub struct Cluster {
    pub label: &'static str,
    /// The namespace holding the bridges `fe`, `repl` and `hostseg`, the
    /// taps and every VM.
    pub netns: Netns,
    /// a, b and the witness, in this order (indexed by [`Name`]).
    pub members: Vec<Member>,
    pub disks: Vec<PathBuf>,
    /// The Linux host running `tests/linux/guest/ha-host.sh`.
    pub host: RunningGuest,
    next_command: u32,
    pub events: Vec<Event>,
    /// Guest wall clock minus this machine's, in ms (the guest's clock is
    /// set from the RTC at boot, to the second).
    clock_offset_ms: i64,
    started: Instant,
    /// The workload's closing report, once stopped.
    io_report: Option<String>,
}

fn host_path_address(layout: &PairLayout, name: Name) -> String {
    layout
        .host_path_address(name.node())
        .expect("a data node is on the host path")
        .to_string()
}

fn build_ackcheck() -> PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ha/ackcheck.rs");
    let out = guest_dir().join("ha-ackcheck");
    // The rustc of the toolchain that runs this test (next to cargo).
    let rustc = std::env::var("RUSTC")
        .ok()
        .or_else(|| {
            let cargo = PathBuf::from(std::env::var_os("CARGO")?);
            let rustc = cargo.with_file_name("rustc");
            rustc.exists().then(|| rustc.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "rustc".into());
    let status = std::process::Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("running {rustc}: {e}"));
    assert!(status.success(), "building {} failed", source.display());
    out
}

/// What a test may change about its cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Timing keys for every tandem node ([`HA_TIMING`] by default; "" for
    /// the image's defaults).
    pub timing: String,
    /// More words for every tandem node's command line (after the layout's
    /// and the timing; a key given here replaces the layout's).
    pub extra: String,
    /// Size of each data node's disk.
    pub disk_bytes: u64,
    /// The Linux host's release (default: [`Release::from_env`]).
    pub host_release: Option<Release>,
    /// More `nvme connect` options for the host (e.g. DH-HMAC-CHAP secrets).
    pub host_connect_opts: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            timing: HA_TIMING.into(),
            extra: String::new(),
            disk_bytes: DISK_BYTES,
            host_release: None,
            host_connect_opts: String::new(),
        }
    }
}

/// The pair's layout in these tests: `cargo tandem up`'s segments and a
/// host path segment, the tests' subsystem NQN.
pub fn layout() -> PairLayout {
    PairLayout {
        nqn: NQN.into(),
        host_path: Some(HOST_PATH.parse::<Subnet>().expect("a subnet")),
        pair_key: Some(pair_key().to_string()),
        ..PairLayout::default()
    }
}

/// The pair's key (`pair_key=`): one per test process.
pub fn pair_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| tandem_qemu::pairkey::generate().expect("a pair key"))
}

/// The host path segment (net2 of a and b; the Linux host is [`HOST_ADDRESS`]).
pub const HOST_PATH: &str = "10.79.0.0/24";
/// The Linux host's address on the host path segment.
pub const HOST_ADDRESS: &str = "10.79.0.20/24";

/// The kernel command line of a member: the layout's, then `serial=`, the
/// timing, the log level (`TANDEM_HA_LOG`, default info) and the test's
/// extra words.
pub fn member_cmdline(name: Name, options: &ClusterOptions) -> String {
    let log = std::env::var("TANDEM_HA_LOG").unwrap_or_else(|_| "info".into());
    let serial = if name == Name::Witness {
        ""
    } else {
        "serial=tandemha0001"
    };
    let extra = format!("{serial} {} log={log} {}", options.timing, options.extra);
    layout().cmdline(name.node(), &extra).to_string()
}

impl Cluster {
    /// Boots a, b and the witness, then the Linux host, which connects to
    /// both portals; returns once a is primary, b secondary, and the host
    /// has both paths.
    pub fn start(label: &'static str) -> Cluster {
        Self::start_with(label, ClusterOptions::default())
    }

    /// [`Cluster::start`] with these timing keys on every tandem node.
    pub fn start_with_timing(label: &'static str, timing: &str) -> Cluster {
        let options = ClusterOptions {
            timing: timing.into(),
            ..ClusterOptions::default()
        };
        Self::start_with(label, options)
    }

    /// [`Cluster::start`] with these options.
    pub fn start_with(label: &'static str, options: ClusterOptions) -> Cluster {
        let release = options.host_release.unwrap_or_else(Release::from_env);
        let image = GuestImage::ensure_release(release).unwrap_or_else(|e| panic!("{e}"));
        let tandem = tandem_image().unwrap_or_else(|e| panic!("{e}"));
        let ackcheck = build_ackcheck();
        let layout = layout();
        layout.validate().unwrap_or_else(|e| panic!("{e}"));
        let netns = Netns::create().unwrap_or_else(|e| panic!("{e}"));
        for bridge in ["fe", "repl", "hostseg"] {
            netns.add_bridge(bridge).unwrap();
        }
        let dir = guest_dir().join("runs").join(format!("ha-{label}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut members = Vec::new();
        let mut disks = Vec::new();
        for name in Name::ALL {
            let p = name.tap_prefix();
            let mut segments = vec![("fe", format!("{p}0")), ("repl", format!("{p}1"))];
            if layout.host_path_address(name.node()).is_some() {
                segments.push(("hostseg", format!("{p}2")));
            }
            for (bridge, tap) in &segments {
                netns.add_tap(tap, Some(bridge)).unwrap();
            }
            let cmdline = member_cmdline(name, &options);
            let mut spec = VmSpec::new(name.as_str(), &dir, &tandem, &cmdline, Accel::Tcg);
            for (_, tap) in &segments {
                spec = spec.nic(
                    name.node().number(),
                    tandem_qemu::NetBackend::Tap {
                        ifname: tap.clone(),
                    },
                );
            }
            if name.node().has_disk() {
                let disk = dir.join(format!("{}.disk.img", name.as_str()));
                create_disk(&disk, options.disk_bytes).unwrap();
                spec = spec.disk(&disk);
                spec.memory_mib = 128;
                disks.push(disk);
            } else {
                spec.memory_mib = 32;
            }
            spec.netns = Some(netns.name().to_string());
            members.push(Member {
                name,
                spec,
                node: None,
                console: None,
                earlier_boots: Vec::new(),
            });
        }
        for member in &mut members {
            let mut node = Node::spawn(member.spec.clone()).unwrap_or_else(|e| panic!("{e}"));
            node.wait_ready(READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{} did not get ready: {e}", member.name.as_str()));
            member.node = Some(node);
        }

        netns.add_tap("h0", Some("hostseg")).unwrap();
        let config = GuestConfig::new(
            &format!("ha-{label}-host"),
            include_str!("../guest/ha-host.sh"),
        )
        .nic(
            NetBackend::Tap {
                ifname: "h0".into(),
            },
            HOST_ADDRESS,
        )
        .memory_mib(768)
        .kernel_arg(&format!("tg.hostnqn={HOST_NQN}"))
        .env("A_ADDR", host_path_address(&layout, Name::A))
        .env("B_ADDR", host_path_address(&layout, Name::B))
        .env("SUBNQN", &layout.nqn)
        // Reconnect a lost path every second, forever (a node comes back).
        .env(
            "CONNECT_OPTS",
            format!(
                "--reconnect-delay=1 --ctrl-loss-tmo=-1 {}",
                options.host_connect_opts
            ),
        )
        .env("CK_OFFSET", CK_OFFSET)
        .env("CK_BLOCKS", CK_BLOCKS)
        .in_netns(&netns)
        .timeout(Duration::from_secs(900));
        let host = crate::spawn(&image, &config).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(&ackcheck, host.share_dir().join("ackcheck")).unwrap();
        let mut cluster = Cluster {
            label,
            netns,
            members,
            disks,
            host,
            next_command: 1,
            events: Vec::new(),
            clock_offset_ms: 0,
            started: Instant::now(),
            io_report: None,
        };
        cluster.wait_role(Name::A, "primary", 0, ROLE_TIMEOUT);
        cluster.wait_role(Name::B, "secondary", 0, ROLE_TIMEOUT);
        if let Err(e) = cluster
            .host
            .wait_for_mark("connected", Duration::from_secs(180))
        {
            cluster.fail("the Linux host did not connect to both portals", e);
        }
        cluster
    }

    pub fn member(&self, name: Name) -> &Member {
        &self.members[name as usize]
    }

    pub fn member_mut(&mut self, name: Name) -> &mut Member {
        &mut self.members[name as usize]
    }

    /// Panics with the error, every node's `status` and console tail.
    pub fn fail(&mut self, what: &str, error: impl std::fmt::Display) -> ! {
        let mut text = format!("{what}: {error}\n");
        for m in &mut self.members {
            let status = match m.node.as_ref() {
                Some(node) => {
                    if m.console.is_none() {
                        m.console = node.console(CONSOLE_TIMEOUT).ok();
                    }
                    m.console
                        .as_mut()
                        .and_then(|c| c.command("status", CONSOLE_TIMEOUT).ok())
                        .map(|l| l.join("\n"))
                        .unwrap_or_else(|| "(no answer)".into())
                }
                None => "(not running)".into(),
            };
            text += &format!(
                "--- {} status:\n{status}\n--- {} console (tail):\n{}\n",
                m.name.as_str(),
                m.name.as_str(),
                m.tail(40)
            );
        }
        text += &format!(
            "--- Linux host console (tail):\n{}\n",
            self.host.console_tail(40)
        );
        panic!("{text}")
    }

    pub fn event(&mut self, what: &str) {
        eprintln!(
            "[{:6.1} s] {}: {what}",
            self.started.elapsed().as_secs_f64(),
            self.label
        );
        self.events.push(Event {
            what: what.to_string(),
            at_ms: epoch_ms(),
            clock_offset_ms: self.clock_offset_ms,
        });
    }

    /// Index of the next role line of `name`'s current boot.
    pub fn role_count(&self, name: Name) -> usize {
        role_lines(&self.member(name).log()).len()
    }

    /// Waits for a role line `role` among `name`'s lines from index `since`
    /// of its current boot.
    pub fn wait_role(
        &mut self,
        name: Name,
        role: &str,
        since: usize,
        timeout: Duration,
    ) -> RoleLine {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = role_lines(&self.member(name).log());
            if let Some(line) = lines.iter().skip(since).find(|l| l.role == role) {
                eprintln!(
                    "[{:6.1} s] {}: {} role {} epoch {} reason {}",
                    self.started.elapsed().as_secs_f64(),
                    self.label,
                    name.as_str(),
                    line.role,
                    line.epoch,
                    line.reason
                );
                return line.clone();
            }
            if Instant::now() > deadline {
                self.fail(
                    &format!("{} did not print `role {role}`", name.as_str()),
                    format!("{timeout:?}"),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn command(&mut self, name: Name, command: &str) -> Vec<String> {
        let member = self.member_mut(name);
        if member.console.is_none() {
            let node = member.node.as_ref().expect("running");
            member.console = Some(
                node.console(CONSOLE_TIMEOUT)
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let result = member
            .console
            .as_mut()
            .expect("connected")
            .command(command, CONSOLE_TIMEOUT);
        match result {
            Ok(lines) => lines,
            Err(e) => self.fail(&format!("`{command}` on {}", name.as_str()), e),
        }
    }

    pub fn status(&mut self, name: Name) -> String {
        self.command(name, "status").join("\n")
    }

    /// Polls `status` on `name` until `predicate` holds.
    pub fn wait_status(
        &mut self,
        name: Name,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(name);
            if predicate(&status) {
                return status;
            }
            if Instant::now() > deadline {
                self.fail(
                    &format!("{}: {what}", name.as_str()),
                    format!("last status:\n{status}"),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `primary` reports its peer UpToDate over an established
    /// stream (no resync left); returns the largest resync seen meanwhile
    /// (regions to copy), if one was seen.
    pub fn wait_in_sync(&mut self, primary: Name, timeout: Duration) -> Option<u64> {
        let peer = primary.peer().as_str();
        let mut largest = None;
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(primary);
            if let Some(total) = status
                .split("regions left)")
                .next()
                .filter(|_| status.contains("resync:"))
                .and_then(|s| s.rsplit("of ").next())
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                largest = Some(largest.unwrap_or(0).max(total));
            }
            let peer_line = status
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{peer} role:")));
            let in_sync = own_line(&status, primary).contains("role:primary")
                && peer_line.is_some_and(|l| l.contains("disk:UpToDate"))
                && status.contains("replication:Established")
                // A finished resync stays listed at 100% until the next one.
                && (!status.contains("resync:") || status.contains("(0 of "));
            if in_sync {
                return largest;
            }
            if Instant::now() > deadline {
                self.fail(
                    &format!("{} did not get its peer back in sync", primary.as_str()),
                    format!("last status:\n{status}"),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn qmp(
        &mut self,
        name: Name,
        what: &str,
        f: impl FnOnce(&mut tandem_qemu::Qmp) -> tandem_qemu::Result<()>,
    ) {
        let node = self.member(name).node.as_ref().expect("running");
        let result = node.qmp(CONSOLE_TIMEOUT).and_then(|mut q| f(&mut q));
        if let Err(e) = result {
            self.fail(&format!("QMP {what} on {}", name.as_str()), e);
        }
    }

    pub fn set_link(&mut self, name: Name, nic: usize, up: bool) {
        let device = format!("nic{nic}");
        self.qmp(name, &format!("set_link {device}"), |q| {
            q.set_link(&device, up)
        });
    }

    /// kill -9 of the member's QEMU; its console log is kept for the checks.
    pub fn kill(&mut self, name: Name) {
        let member = self.member_mut(name);
        member.console = None;
        if let Some(mut node) = member.node.take() {
            node.kill();
            let log = node.console_log();
            member.earlier_boots.push(log);
        }
    }

    /// Boots the member again with the same disk and command line.
    pub fn restart(&mut self, name: Name) {
        let member = self.member_mut(name);
        assert!(member.node.is_none(), "kill before restart");
        let mut node = Node::spawn(member.spec.clone()).unwrap_or_else(|e| panic!("{e}"));
        let ready = node.wait_ready(READY_TIMEOUT);
        member.node = Some(node);
        if let Err(e) = ready {
            self.fail(&format!("{} did not get ready again", name.as_str()), e);
        }
    }

    /// Runs a command of the host script; returns whether it succeeded and
    /// its output.
    pub fn host_command(&mut self, command: &str, timeout: Duration) -> (bool, String) {
        let n = self.next_command;
        self.next_command += 1;
        let share = self.host.share_dir();
        std::fs::write(share.join(format!("cmd-{n}")), command).unwrap();
        if let Err(e) = self.host.wait_for_mark(&format!("done-{n}"), timeout) {
            self.fail(&format!("host command `{command}`"), e);
        }
        let output = std::fs::read_to_string(share.join(format!("res-{n}"))).unwrap_or_default();
        let ok = std::fs::read_to_string(share.join(format!("rc-{n}")))
            .map(|rc| rc.trim() == "0")
            .unwrap_or(false);
        (ok, output)
    }

    pub fn host_ok(&mut self, command: &str, timeout: Duration) -> String {
        let (ok, output) = self.host_command(command, timeout);
        if !ok {
            self.fail(&format!("host command `{command}` failed"), output);
        }
        output
    }

    /// Measures the guest's clock offset: the reading of the quickest of
    /// three command round trips.
    pub fn measure_clock(&mut self) {
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..3 {
            let before = epoch_ms();
            let output = self.host_ok("clock", Duration::from_secs(30));
            let after = epoch_ms();
            let Some(guest) = output.lines().find_map(|l| l.trim().parse::<u64>().ok()) else {
                continue;
            };
            let offset = guest as i64 - ((before + after) / 2) as i64;
            if best.is_none_or(|(rtt, _)| after - before < rtt) {
                best = Some((after - before, offset));
            }
        }
        if let Some((rtt, offset)) = best {
            eprintln!("guest clock offset {offset} ms (round trip {rtt} ms)");
            self.clock_offset_ms = offset;
        }
    }

    /// A time of this machine (ms since the epoch) on the guest's clock,
    /// the clock of the host's logs (after [`Cluster::measure_clock`]).
    pub fn on_guest(&self, host_ms: u64) -> u64 {
        (host_ms as i64 + self.clock_offset_ms).max(0) as u64
    }

    pub fn start_io(&mut self) {
        self.measure_clock();
        self.host_ok("start-io", Duration::from_secs(60));
        self.event("I/O started");
    }

    /// As [`Cluster::start_io`], fio with the ioengine `engine` (e.g.
    /// `libaio`: its writes are queued by multipath while no path serves,
    /// where Linux 6.1 fails io_uring's with EAGAIN, docs/benchmarks.md).
    pub fn start_io_with(&mut self, engine: &str) {
        self.measure_clock();
        self.host_ok(&format!("start-io {engine}"), Duration::from_secs(60));
        self.event(&format!("I/O started (fio {engine})"));
    }

    /// Lets the workload run for `HOLD`, then checks that fio and ackcheck
    /// are still running (no error ended them).
    pub fn hold(&mut self) {
        std::thread::sleep(HOLD);
        self.host_ok("io-alive", Duration::from_secs(60));
    }

    /// Completions the checker logged so far (acknowledged writes and
    /// checked reads), in ms since the epoch.
    pub fn ackcheck_completions(&self) -> Vec<u64> {
        let log =
            std::fs::read_to_string(self.host.share_dir().join("ackcheck.log")).unwrap_or_default();
        let mut times: Vec<u64> = log
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                matches!(w.next(), Some("W") | Some("R")).then_some(())?;
                w.next()?.parse().ok()
            })
            .collect();
        times.sort_unstable();
        times
    }

    /// fio's completions (the latency log of fio's I/Os), ms since the epoch.
    pub fn fio_completions(&self) -> Vec<u64> {
        let mut times = Vec::new();
        let share = self.host.share_dir();
        for entry in std::fs::read_dir(&share).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("fio_lat.") && name.ends_with(".log")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            times.extend(
                text.lines()
                    .filter_map(|l| l.split(',').next()?.trim().parse::<u64>().ok()),
            );
        }
        times.sort_unstable();
        times
    }

    /// Waits until the checker logged a completion after `since_ms` (this
    /// machine's clock; the checker's are the guest's, converted with the
    /// offset measured last): I/O flows again.
    pub fn wait_io_flows(&mut self, since_ms: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let on_guest = (since_ms as i64 + self.clock_offset_ms).max(0) as u64;
        loop {
            if self
                .ackcheck_completions()
                .last()
                .is_some_and(|t| *t > on_guest + 1000)
            {
                return;
            }
            if Instant::now() > deadline {
                let paths = self.host_command("paths", Duration::from_secs(30)).1;
                self.fail("host I/O did not resume", format!("paths:\n{paths}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the workload: fio must report no error, ackcheck's read-back
    /// no lost, stale or corrupt block.
    /// A second call returns the first one's report (a test may read the
    /// stalls before [`Cluster::finish`]).
    pub fn stop_io(&mut self) -> String {
        if let Some(report) = &self.io_report {
            return report.clone();
        }
        self.event("I/O stopped");
        let (ok, output) = self.host_command("stop-io", Duration::from_secs(180));
        eprintln!("{output}");
        if !ok {
            self.fail("the workload failed", output);
        }
        assert!(
            output.contains("stale=0 lost=0 corrupt=0 unreadable=0"),
            "ackcheck report:\n{output}"
        );
        self.io_report = Some(output.clone());
        output
    }

    /// ackcheck reads every block back again (through whichever node
    /// serves now).
    pub fn verify(&mut self, on: &str) {
        let (ok, output) = self.host_command("verify", Duration::from_secs(180));
        eprintln!("verify on {on}: {output}");
        if !ok {
            self.fail(&format!("ackcheck verify on {on}"), output);
        }
    }

    /// The largest completion gap around each event whose name starts with
    /// `prefix`, from 100 ms before it to the next event (at most 20 s), on
    /// the guest's clock: (fio, ackcheck) in ms.
    pub fn stalls(&self, prefix: &str) -> Vec<(String, Option<u64>, Option<u64>)> {
        let fio = self.fio_completions();
        let ck = self.ackcheck_completions();
        let mut out = Vec::new();
        let stopped = self
            .events
            .iter()
            .position(|e| e.what == "I/O stopped")
            .unwrap_or(self.events.len());
        // Host times on the guest's clock, with the offset measured last
        // before the event.
        let on_guest = |event: &Event| (event.at_ms as i64 + event.clock_offset_ms).max(0) as u64;
        for (i, event) in self.events.iter().enumerate().take(stopped) {
            if !event.what.starts_with(prefix) {
                continue;
            }
            let at = on_guest(event);
            // Up to the next step, at most 20 s: the stall follows the event.
            let to = self
                .events
                .get(i + 1)
                .map(on_guest)
                .unwrap_or(u64::MAX)
                .min(at + 20_000);
            // The baseline window starts once the workload runs; the others
            // a little before the event (the offset is known to some ms).
            let from = if prefix == "I/O started" {
                at + 1000
            } else {
                at.saturating_sub(100)
            };
            out.push((
                event.what.clone(),
                max_gap(&fio, from, to),
                max_gap(&ck, from, to),
            ));
        }
        out
    }

    /// The replica oracle: with the workload stopped and the pair in sync,
    /// the two disks' data areas are identical, compared region by region
    /// from the files QEMU writes through this machine's page cache. A
    /// region that differs is one no bitmap marks any more (in sync, every
    /// region both nodes may disagree on has been copied).
    pub fn check_replicas_identical(&mut self) {
        // The last writes' clean cycle (bitmap_flush_interval, 1 s).
        std::thread::sleep(Duration::from_secs(2));
        let (a, b) = (self.disks[0].clone(), self.disks[1].clone());
        let bytes = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let data = data_area_bytes(bytes(&a)).min(data_area_bytes(bytes(&b)));
        let read = |p: &std::path::Path, offset: u64, len: usize| -> Vec<u8> {
            use std::io::{Read, Seek, SeekFrom};
            let mut buf = vec![0; len];
            let ok = std::fs::File::open(p).and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(&mut buf)
            });
            ok.map(|_| buf).unwrap_or_default()
        };
        let mut differing = Vec::new();
        let mut offset = 0;
        while offset < data {
            let len = REGION_BYTES.min(data - offset) as usize;
            if read(&a, offset, len) != read(&b, offset, len) {
                differing.push(offset / REGION_BYTES);
            }
            offset += REGION_BYTES;
        }
        if !differing.is_empty() {
            self.fail(
                "the replicas differ once in sync (regions of 64 KiB)",
                format!("{differing:?}"),
            );
        }
        eprintln!("replica oracle: {} bytes identical on a and b", data);
    }

    /// At most one node claimed primary in any epoch (every boot counted).
    pub fn check_no_split_brain(&self) {
        let mut primaries: BTreeMap<u64, Vec<&'static str>> = BTreeMap::new();
        for name in [Name::A, Name::B] {
            for (_, line) in self.member(name).all_roles() {
                if line.role == "primary" {
                    let nodes = primaries.entry(line.epoch).or_default();
                    if !nodes.contains(&name.as_str()) {
                        nodes.push(name.as_str());
                    }
                }
            }
        }
        for (epoch, nodes) in &primaries {
            assert!(
                nodes.len() <= 1,
                "split brain: {nodes:?} both primary in epoch {epoch}\n{}",
                self.role_report()
            );
        }
    }

    pub fn role_report(&self) -> String {
        let mut text = String::new();
        for m in &self.members {
            for (boot, line) in m.all_roles() {
                text += &format!(
                    "{} boot {boot}: role {} epoch {} reason {}\n",
                    m.name.as_str(),
                    line.role,
                    line.epoch,
                    line.reason
                );
            }
        }
        text
    }

    /// Exactly one of a and b serves (primary, ANA optimized); returns it.
    pub fn serving(&mut self) -> Name {
        let mut serving = Vec::new();
        for name in [Name::A, Name::B] {
            if self.member(name).node.is_none() {
                continue;
            }
            let status = self.status(name);
            let first = own_line(&status, name);
            if first.contains("role:primary") && first.contains("ana:optimized") {
                serving.push(name);
            }
        }
        if serving.len() != 1 {
            self.fail("not exactly one node serving", format!("{serving:?}"));
        }
        serving[0]
    }

    /// Planned switchover from `from` (primary) to its peer, by `demote` on
    /// `from` or `promote` on the peer.
    pub fn switchover(&mut self, from: Name, by_promote: bool) -> RoleLine {
        let to = from.peer();
        // A switchover needs the peer in sync (no resync under way).
        self.wait_in_sync(from, Duration::from_secs(120));
        let since_to = self.role_count(to);
        let since_from = self.role_count(from);
        let (on, command) = if by_promote {
            (to, "promote")
        } else {
            (from, "demote")
        };
        self.event(&format!(
            "switchover {} -> {} ({command} on {})",
            from.as_str(),
            to.as_str(),
            on.as_str()
        ));
        let out = self.command(on, command).join("\n");
        if out.contains("error") {
            let status = self.status(from);
            self.fail(
                &format!("`{command}` on {} refused", on.as_str()),
                format!("{out}\n{} status:\n{status}", from.as_str()),
            );
        }
        let line = self.wait_role(to, "primary", since_to, ROLE_TIMEOUT);
        let old = self.wait_role(from, "secondary", since_from, ROLE_TIMEOUT);
        assert!(
            old.epoch >= line.epoch,
            "the old primary follows the new record"
        );
        line
    }

    /// The closing checks every test shares, then everything is stopped.
    /// The stalls of events named `stall_prefix` go to the benchmark notes.
    pub fn finish(mut self, stall_prefix: Option<&str>) {
        let report = self.stop_io();
        self.finish_stopped(report, stall_prefix, true);
    }

    /// [`Cluster::finish`] once the workload was stopped ([`Cluster::stop_io`]
    /// gave `report`). With `read_other_copy` the role is switched over and
    /// everything read back on the other node too; without (the other node
    /// cannot serve hosts) its copy is checked by the replica oracle alone.
    pub fn finish_stopped(
        mut self,
        report: String,
        stall_prefix: Option<&str>,
        read_other_copy: bool,
    ) {
        let primary = self.serving();
        self.wait_in_sync(primary, Duration::from_secs(120));
        self.check_replicas_identical();
        self.verify(primary.as_str());
        if read_other_copy {
            // The other node's copy: switch over, read everything back there.
            self.switchover(primary, false);
            let primary = primary.peer();
            assert_eq!(self.serving(), primary);
            self.verify(primary.as_str());
        }
        self.check_no_split_brain();
        eprintln!("{}\n{report}", self.role_report());
        for prefix in [
            "I/O started",
            "switchover",
            "kill",
            "isolate",
            "pause",
            "repl link down",
            "witness",
            "secondary",
            "front-end",
        ] {
            for (what, fio, ck) in self.stalls(prefix) {
                eprintln!("stall: {what}: fio max gap {fio:?} ms, ackcheck max gap {ck:?} ms");
            }
        }
        if let Some(prefix) = stall_prefix {
            write_stalls("baseline", &self.stalls("I/O started"));
            write_stalls(prefix, &self.stalls(prefix));
        }
        let (_, output) = self.host_command("exit", Duration::from_secs(30));
        assert!(output.contains("=== PASS"), "host script: {output}");
        for name in [Name::A, Name::B, Name::Witness] {
            let log = self.member(name).log();
            assert!(
                !log.contains("tandem: panic"),
                "{} panicked:\n{log}",
                name.as_str()
            );
            for boot in &self.member(name).earlier_boots {
                assert!(
                    !boot.contains("tandem: panic"),
                    "{} panicked:\n{boot}",
                    name.as_str()
                );
            }
        }
        for disk in &self.disks {
            let _ = std::fs::remove_file(disk);
        }
        let _ = &self.netns;
    }
}

/// Records the stalls of one kind of event for the benchmark section
/// (appended to `target/linux-guest/runs/ha-stalls-<kind>.txt`).
pub fn write_stalls(kind: &str, stalls: &[(String, Option<u64>, Option<u64>)]) {
    let dir = guest_dir().join("runs");
    let mut text = String::new();
    for (what, fio, ck) in stalls {
        text += &format!(
            "{what}\tfio={}\tackcheck={}\n",
            fio.map(|v| v.to_string()).unwrap_or("-".into()),
            ck.map(|v| v.to_string()).unwrap_or("-".into())
        );
    }
    let path = dir.join(format!("ha-stalls-{kind}.txt"));
    let mut old = std::fs::read_to_string(&path).unwrap_or_default();
    old += &text;
    let _ = std::fs::write(&path, old);
    eprint!("stalls ({kind}):\n{text}");
}

/// Takes the one-at-a-time lock of the HA tests; `None` (with a notice)
/// without root.
pub fn lock() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("\n!!! SKIPPED: the HA tests need root (network namespace, taps)\n");
        return None;
    }
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_boot_with_the_layout_and_the_host_path() {
        let options = ClusterOptions {
            extra: "hb_interval=50 quiet".into(),
            ..ClusterOptions::default()
        };
        let a = member_cmdline(Name::A, &options);
        for word in [
            "net0=10.77.0.1/24",
            "net1=10.78.0.1/24",
            "net2=10.79.0.1/24",
            "node=a",
            "peer=10.77.0.2,10.79.0.2",
            "peer_repl=10.78.0.2",
            "witness=10.77.0.3",
            "witness_repl=10.78.0.3",
            "nqn=nqn.2026-11.io.tandem.test:ha",
            "serial=tandemha0001",
            "hb_timeout=2000",
            "lease=1500",
            "hb_interval=50",
            "quiet",
        ] {
            assert!(a.split_whitespace().any(|w| w == word), "{word} in {a}");
        }
        assert!(
            !a.contains("hb_interval=100"),
            "the test's words replace the timing: {a}"
        );
        let witness = member_cmdline(Name::Witness, &ClusterOptions::default());
        assert!(
            witness.starts_with("net0=10.77.0.3/24 net1=10.78.0.3/24 ")
                && witness.split_whitespace().any(|w| w == "role=witness"),
            "{witness}"
        );
        let key = format!("pair_key={}", pair_key());
        assert!(
            a.split_whitespace().any(|w| w == key) && witness.split_whitespace().any(|w| w == key)
        );
        assert!(
            !witness.contains("net2=") && !witness.contains("serial="),
            "{witness}"
        );
    }

    #[test]
    fn role_lines_are_found_after_a_prompt_and_in_log_noise() {
        let console = "tandem> tandem: role secondary epoch 0 reason boot\n\
                       [    0.301] INFO  ha: replication stream connected\n\
                       tandem: role primary epoch 12 reason failover (after 2 s)\n\
                       tandem: role primary epoch x reason bad\n";
        assert_eq!(
            role_lines(console),
            vec![
                RoleLine {
                    role: "secondary".into(),
                    epoch: 0,
                    reason: "boot".into()
                },
                RoleLine {
                    role: "primary".into(),
                    epoch: 12,
                    reason: "failover".into()
                },
            ]
        );
    }

    #[test]
    fn max_gap_counts_from_the_last_completion_before_the_window() {
        let times = [100, 200, 300, 1300, 1350, 5000];
        assert_eq!(max_gap(&times, 250, 1400), Some(1000));
        assert_eq!(max_gap(&times, 1300, 1400), Some(1000));
        assert_eq!(max_gap(&times, 1310, 1400), Some(50));
        // One completion: no gap to measure (a stall longer than the window).
        assert_eq!(max_gap(&times, 0, 150), None);
        assert_eq!(max_gap(&times, 6000, 7000), None);
    }
}

/// The median and the largest of a benchmark's figures (0 for none).
pub fn median_max(values: &[u64]) -> (u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}
