//! The HA pair against the stock Linux NVMe/TCP host (Debian 6.1 kernel,
//! native NVMe multipath): tandem nodes `a` and `b` and the witness, booted
//! from the image under QEMU (TCG), and a Linux guest connected to both data
//! nodes (one subsystem NQN, two portals, one namespace head), running fio
//! (random writes with crc32c verify) and `ackcheck`, the acknowledged-write
//! checker (`tests/linux/ha/ackcheck.rs`), while the test injects faults.
//!
//! Segments (bridges in a network namespace of the test, a tap per NIC):
//!
//! | segment | a | b | witness | Linux host |
//! |---|---|---|---|---|
//! | front-end, heartbeats (net0) 10.77.0.0/24 | .1 | .2 | .3 | — |
//! | replication link (net1) 10.78.0.0/24 | .1 | .2 | .3 | — |
//! | host path (net2) 10.79.0.0/24 | .1 | .2 | — | .20 |
//!
//! The host's path is a segment of its own, so that a node can be cut off
//! from its peer and the witness (net0 and net1 down) while the host still
//! reaches it (issue 4, test 4).
//!
//! Every test ends the same way: the workload stops, fio must report no
//! error, ackcheck reads every block back (no acknowledged write lost, no
//! stale read seen during the run), the role lines of every boot show at
//! most one primary per epoch, exactly one node serves, and after a
//! switchover to the other node ackcheck reads everything back there too.
//!
//! Needs root (namespace, taps) and QEMU; builds the Linux guest and the
//! tandem image on first use; skipped with a notice without root. The tests
//! take turns (one lock): each boots four VMs on a machine that may have two
//! cores; the five take 6–9 minutes under TCG on two busy cores.
//! `TANDEM_HA_LOG=debug` boots the nodes with `log=debug`; consoles,
//! QEMU logs, the guest's share (fio latency log, ackcheck log) stay in
//! `target/linux-guest/runs/ha-*`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_linux_guest::image::guest_dir;
use tandem_linux_guest::scenario::create_disk;
use tandem_linux_guest::tandem::tandem_image;
use tandem_linux_guest::{GuestConfig, GuestImage, NetBackend, Netns, RunningGuest};
use tandem_qemu::{Accel, ConsoleClient, Node, VmSpec};

const NQN: &str = "nqn.2026-11.io.tandem.test:ha";
const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7a1c2e3d-4b5a-4697-8a7b-6c5d4e3f2a21";
/// Timing for the fault tests: slack for TCG on a loaded two-core machine
/// (a starved VM must not flap while the tests check roles).
const HA_TIMING: &str = "hb_interval=100 hb_timeout=2000 lease=1500";
/// The benchmarks measure the image's default timing (hb_interval 50 ms,
/// hb_timeout 500 ms, lease 400 ms); they report every role change, so a
/// flap would show.
const DEFAULT_TIMING: &str = "";
const DISK_BYTES: u64 = 128 << 20;
const REGION_BYTES: u64 = 64 << 10;
/// fio writes the first 32 MiB, ackcheck 2048 blocks from 40 MiB on.
const CK_OFFSET: u64 = 40 << 20;
const CK_BLOCKS: u64 = 2048;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A role change after a fault (failure timeout, promise horizon, a busy
/// machine).
const ROLE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the workload runs between steps.
const HOLD: Duration = Duration::from_secs(6);

/// One test at a time: each boots four VMs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `tandem: role <role> epoch <N> reason <text>` as printed by a node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RoleLine {
    role: String,
    epoch: u64,
    reason: String,
}

fn role_lines(console: &str) -> Vec<RoleLine> {
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
fn max_gap(times: &[u64], from: u64, to: u64) -> Option<u64> {
    let start = times.partition_point(|t| *t < from);
    let first = start.saturating_sub(1);
    let end = times.partition_point(|t| *t <= to);
    let window = times.get(first..end)?;
    window.windows(2).map(|w| w[1] - w[0]).max()
}

/// The `<node> role:… epoch:… disk:… ana:…` line of a node's own status.
fn own_line(status: &str, name: Name) -> String {
    let prefix = format!("{} role:", name.as_str());
    status
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or("")
        .to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    A,
    B,
    Witness,
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::A => "a",
            Name::B => "b",
            Name::Witness => "witness",
        }
    }
    fn tap_prefix(self) -> &'static str {
        match self {
            Name::A => "a",
            Name::B => "b",
            Name::Witness => "w",
        }
    }
    fn host_octet(self) -> u8 {
        match self {
            Name::A => 1,
            Name::B => 2,
            Name::Witness => 3,
        }
    }
    fn peer(self) -> Name {
        match self {
            Name::A => Name::B,
            _ => Name::A,
        }
    }
}

/// One tandem VM of the trio, across its boots.
struct Member {
    name: Name,
    spec: VmSpec,
    node: Option<Node>,
    console: Option<ConsoleClient>,
    /// Console logs of earlier boots (a restart starts a fresh log).
    earlier_boots: Vec<String>,
}

impl Member {
    fn log(&self) -> String {
        self.node
            .as_ref()
            .map(|n| n.console_log())
            .unwrap_or_default()
    }

    /// Role lines of all boots, oldest first, with the boot number.
    fn all_roles(&self) -> Vec<(usize, RoleLine)> {
        let mut all = Vec::new();
        for (boot, log) in self.earlier_boots.iter().enumerate() {
            all.extend(role_lines(log).into_iter().map(|r| (boot, r)));
        }
        let boot = self.earlier_boots.len();
        all.extend(role_lines(&self.log()).into_iter().map(|r| (boot, r)));
        all
    }

    fn tail(&self, lines: usize) -> String {
        tandem_qemu::console::log_tail(&self.spec.console_log(), lines)
    }
}

/// A fault or step injected by the test, with its wall-clock time.
struct Event {
    what: String,
    at_ms: u64,
}

/// The trio, its segments and the Linux host.
struct Cluster {
    label: &'static str,
    netns: Netns,
    members: Vec<Member>,
    disks: Vec<PathBuf>,
    host: RunningGuest,
    next_command: u32,
    events: Vec<Event>,
    /// Guest wall clock minus this machine's, in ms (the guest's clock is
    /// set from the RTC at boot, to the second).
    clock_offset_ms: i64,
    started: Instant,
}

fn build_ackcheck() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("ha/ackcheck.rs");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ha-ackcheck");
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

impl Cluster {
    /// Boots a, b and the witness, then the Linux host, which connects to
    /// both portals; returns once a is primary, b secondary, and the host
    /// has both paths.
    fn start(label: &'static str) -> Cluster {
        Self::start_with(label, HA_TIMING)
    }

    /// [`Cluster::start`] with these timing keys on every tandem node.
    fn start_with(label: &'static str, timing: &str) -> Cluster {
        let image = GuestImage::ensure().unwrap_or_else(|e| panic!("{e}"));
        let tandem = tandem_image().unwrap_or_else(|e| panic!("{e}"));
        let ackcheck = build_ackcheck();
        let netns = Netns::create().unwrap_or_else(|e| panic!("{e}"));
        for bridge in ["fe", "repl", "hostseg"] {
            netns.add_bridge(bridge).unwrap();
        }
        let dir = guest_dir().join("runs").join(format!("ha-{label}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let extra_log = std::env::var("TANDEM_HA_LOG")
            .map(|l| format!("log={l}"))
            .unwrap_or_else(|_| "log=info".into());
        let mut members = Vec::new();
        let mut disks = Vec::new();
        for name in [Name::A, Name::B, Name::Witness] {
            let n = name.host_octet();
            let p = name.tap_prefix();
            let mut segments = vec![("fe", format!("{p}0")), ("repl", format!("{p}1"))];
            if name != Name::Witness {
                segments.push(("hostseg", format!("{p}2")));
            }
            for (bridge, tap) in &segments {
                netns.add_tap(tap, Some(bridge)).unwrap();
            }
            let cmdline = match name {
                Name::Witness => format!(
                    "net0=10.77.0.{n}/24 net1=10.78.0.{n}/24 role=witness node_a=10.77.0.1 node_b=10.77.0.2 \
                     node_a_repl=10.78.0.1 node_b_repl=10.78.0.2 {timing} {extra_log}"
                ),
                _ => {
                    let peer = name.peer().host_octet();
                    let cntlid = if name == Name::A {
                        "1-999"
                    } else {
                        "1000-1999"
                    };
                    format!(
                        "net0=10.77.0.{n}/24 net1=10.78.0.{n}/24 net2=10.79.0.{n}/24 node={} \
                         peer=10.77.0.{peer},10.79.0.{peer} peer_repl=10.78.0.{peer} witness=10.77.0.3 \
                         witness_repl=10.78.0.3 cntlid={cntlid} nqn={NQN} serial=tandemha0001 \
                         {timing} {extra_log}",
                        name.as_str()
                    )
                }
            };
            let mut spec = VmSpec::new(name.as_str(), &dir, &tandem, &cmdline, Accel::Tcg);
            for (i, (_, tap)) in segments.iter().enumerate() {
                let _ = i;
                spec = spec.nic(
                    n,
                    tandem_qemu::NetBackend::Tap {
                        ifname: tap.clone(),
                    },
                );
            }
            if name == Name::Witness {
                spec.memory_mib = 32;
            } else {
                let disk = dir.join(format!("{}.disk.img", name.as_str()));
                create_disk(&disk, DISK_BYTES).unwrap();
                spec = spec.disk(&disk);
                spec.memory_mib = 128;
                disks.push(disk);
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
            "10.79.0.20/24",
        )
        .memory_mib(768)
        .kernel_arg(&format!("tg.hostnqn={HOST_NQN}"))
        .env("A_ADDR", "10.79.0.1")
        .env("B_ADDR", "10.79.0.2")
        .env("SUBNQN", NQN)
        // Reconnect a lost path every second, forever (a node comes back).
        .env("CONNECT_OPTS", "--reconnect-delay=1 --ctrl-loss-tmo=-1")
        .env("CK_OFFSET", CK_OFFSET)
        .env("CK_BLOCKS", CK_BLOCKS)
        .in_netns(&netns)
        .timeout(Duration::from_secs(900));
        let host = tandem_linux_guest::spawn(&image, &config).unwrap_or_else(|e| panic!("{e}"));
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

    fn member(&self, name: Name) -> &Member {
        &self.members[name as usize]
    }

    fn member_mut(&mut self, name: Name) -> &mut Member {
        &mut self.members[name as usize]
    }

    /// Panics with the error, every node's `status` and console tail.
    fn fail(&mut self, what: &str, error: impl std::fmt::Display) -> ! {
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

    fn event(&mut self, what: &str) {
        eprintln!(
            "[{:6.1} s] {}: {what}",
            self.started.elapsed().as_secs_f64(),
            self.label
        );
        self.events.push(Event {
            what: what.to_string(),
            at_ms: epoch_ms(),
        });
    }

    /// Index of the next role line of `name`'s current boot.
    fn role_count(&self, name: Name) -> usize {
        role_lines(&self.member(name).log()).len()
    }

    /// Waits for a role line `role` among `name`'s lines from index `since`
    /// of its current boot.
    fn wait_role(&mut self, name: Name, role: &str, since: usize, timeout: Duration) -> RoleLine {
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

    fn command(&mut self, name: Name, command: &str) -> Vec<String> {
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

    fn status(&mut self, name: Name) -> String {
        self.command(name, "status").join("\n")
    }

    /// Polls `status` on `name` until `predicate` holds.
    fn wait_status(
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
    fn wait_in_sync(&mut self, primary: Name, timeout: Duration) -> Option<u64> {
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

    fn qmp(
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

    fn set_link(&mut self, name: Name, nic: usize, up: bool) {
        let device = format!("nic{nic}");
        self.qmp(name, &format!("set_link {device}"), |q| {
            q.set_link(&device, up)
        });
    }

    /// kill -9 of the member's QEMU; its console log is kept for the checks.
    fn kill(&mut self, name: Name) {
        let member = self.member_mut(name);
        member.console = None;
        if let Some(mut node) = member.node.take() {
            node.kill();
            let log = node.console_log();
            member.earlier_boots.push(log);
        }
    }

    /// Boots the member again with the same disk and command line.
    fn restart(&mut self, name: Name) {
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
    fn host_command(&mut self, command: &str, timeout: Duration) -> (bool, String) {
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

    fn host_ok(&mut self, command: &str, timeout: Duration) -> String {
        let (ok, output) = self.host_command(command, timeout);
        if !ok {
            self.fail(&format!("host command `{command}` failed"), output);
        }
        output
    }

    /// Measures the guest's clock offset: the reading of the quickest of
    /// three command round trips.
    fn measure_clock(&mut self) {
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

    fn start_io(&mut self) {
        self.measure_clock();
        self.host_ok("start-io", Duration::from_secs(60));
        self.event("I/O started");
    }

    /// Lets the workload run for `HOLD`, then checks that fio and ackcheck
    /// are still running (no error ended them).
    fn hold(&mut self) {
        std::thread::sleep(HOLD);
        self.host_ok("io-alive", Duration::from_secs(60));
    }

    /// Completions the checker logged so far (acknowledged writes and
    /// checked reads), in ms since the epoch.
    fn ackcheck_completions(&self) -> Vec<u64> {
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
    fn fio_completions(&self) -> Vec<u64> {
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

    /// Waits until the checker logged a completion after `since_ms`: I/O
    /// flows again.
    fn wait_io_flows(&mut self, since_ms: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .ackcheck_completions()
                .last()
                .is_some_and(|t| *t > since_ms + 1000)
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
    fn stop_io(&mut self) -> String {
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
        output
    }

    /// ackcheck reads every block back again (through whichever node
    /// serves now).
    fn verify(&mut self, on: &str) {
        let (ok, output) = self.host_command("verify", Duration::from_secs(180));
        eprintln!("verify on {on}: {output}");
        if !ok {
            self.fail(&format!("ackcheck verify on {on}"), output);
        }
    }

    /// The largest completion gap around each event whose name starts with
    /// `prefix`, from 100 ms before it to the next event (at most 20 s), on
    /// the guest's clock: (fio, ackcheck) in ms.
    fn stalls(&self, prefix: &str) -> Vec<(String, Option<u64>, Option<u64>)> {
        let fio = self.fio_completions();
        let ck = self.ackcheck_completions();
        let mut out = Vec::new();
        let stopped = self
            .events
            .iter()
            .position(|e| e.what == "I/O stopped")
            .unwrap_or(self.events.len());
        // Host times on the guest's clock.
        let on_guest = |ms: u64| (ms as i64 + self.clock_offset_ms).max(0) as u64;
        for (i, event) in self.events.iter().enumerate().take(stopped) {
            if !event.what.starts_with(prefix) {
                continue;
            }
            let at = on_guest(event.at_ms);
            // Up to the next step, at most 20 s: the stall follows the event.
            let to = self
                .events
                .get(i + 1)
                .map(|e| on_guest(e.at_ms))
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

    /// At most one node claimed primary in any epoch (every boot counted).
    fn check_no_split_brain(&self) {
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

    fn role_report(&self) -> String {
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
    fn serving(&mut self) -> Name {
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
    fn switchover(&mut self, from: Name, by_promote: bool) -> RoleLine {
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
    fn finish(mut self, stall_prefix: Option<&str>) {
        let report = self.stop_io();
        let primary = self.serving();
        self.wait_in_sync(primary, Duration::from_secs(120));
        self.verify(primary.as_str());
        // The other node's copy: switch over, read everything back there.
        self.switchover(primary, false);
        let primary = primary.peer();
        assert_eq!(self.serving(), primary);
        self.verify(primary.as_str());
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

fn lock() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("\n!!! SKIPPED: the HA tests need root (network namespace, taps)\n");
        return None;
    }
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Issue 4, tests 1 and 3: planned switchover both ways (demote on the
/// primary, then promote on the secondary) with fio and ackcheck running:
/// no I/O error; then the replication link of the primary down: no split
/// brain, the primary goes on alone (its peer recorded Outdated), and on
/// link up the peer catches up.
#[test]
fn switchover_both_ways_and_replication_link_down() {
    let Some(_guard) = lock() else { return };
    let mut c = Cluster::start("switch");
    c.start_io();
    c.hold();
    c.switchover(Name::A, false);
    c.hold();
    c.switchover(Name::B, true);
    c.hold();
    assert_eq!(c.serving(), Name::A);

    let since_b = c.role_count(Name::B);
    c.event("repl link down (a net1)");
    c.set_link(Name::A, 1, false);
    // The front-end heartbeats keep the pair together: a goes on alone
    // once b is recorded Outdated; b never becomes primary.
    c.wait_status(Name::A, "records b Outdated", ROLE_TIMEOUT, |s| {
        s.lines()
            .any(|l| l.trim_start().starts_with("b role:") && l.contains("disk:Outdated"))
    });
    let at = epoch_ms();
    c.wait_io_flows(at, ROLE_TIMEOUT);
    c.hold();
    assert_eq!(c.serving(), Name::A);
    assert!(
        role_lines(&c.member(Name::B).log())
            .iter()
            .skip(since_b)
            .all(|l| l.role != "primary"),
        "b became primary while only the replication link was down:\n{}",
        c.role_report()
    );
    c.event("repl link up (a net1)");
    c.set_link(Name::A, 1, true);
    let resync = c.wait_in_sync(Name::A, Duration::from_secs(120));
    eprintln!("resync after the link came back: {resync:?} regions");
    c.hold();
    c.finish(Some("switchover"));
}

/// A filesystem on the pair: mkfs.ext4 (which deallocates the namespace
/// and may zero parts of it), files written, one deleted and trimmed away
/// (Deallocate through `fstrim`), unmounted; after a switchover the other
/// node serves the same files. Both nodes' disks carried out the discards.
#[test]
fn filesystem_with_discards_across_a_switchover() {
    let Some(_guard) = lock() else { return };
    let mut c = Cluster::start("fs");
    let primary = c.serving();
    let made = c.host_ok("fs-make", Duration::from_secs(300));
    assert!(made.contains("/mnt/fs/keep"), "{made}");
    c.switchover(primary, false);
    let checked = c.host_ok("fs-check", Duration::from_secs(120));
    assert!(checked.contains("OK"), "{checked}");
    for name in [Name::A, Name::B] {
        let status = c.status(name);
        let discards = status
            .lines()
            .find(|l| l.trim_start().starts_with("reads="))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("discards=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| c.fail("disk counters", &status));
        assert!(discards >= 1, "{} discarded nothing:\n{status}", name.as_str());
    }
    c.check_no_split_brain();
    let (_, output) = c.host_command("exit", Duration::from_secs(30));
    assert!(output.contains("=== PASS"), "host script: {output}");
    for name in [Name::A, Name::B, Name::Witness] {
        let log = c.member(name).log();
        assert!(!log.contains("tandem: panic"), "{} panicked:\n{log}", name.as_str());
    }
}

/// Issue 4, test 2: kill -9 of the primary's QEMU: I/O goes on through b;
/// a, restarted on the same disk, resyncs only the dirty regions and
/// becomes Secondary; the final read-back passes on both copies.
#[test]
fn primary_killed_then_restarted_resyncs() {
    let Some(_guard) = lock() else { return };
    let mut c = Cluster::start("kill");
    c.start_io();
    c.hold();
    let since_b = c.role_count(Name::B);
    c.event("kill -9 a (primary)");
    let at = epoch_ms();
    c.kill(Name::A);
    let line = c.wait_role(Name::B, "primary", since_b, ROLE_TIMEOUT);
    assert_eq!(line.reason, "failover", "b took over: {line:?}");
    c.wait_io_flows(at, Duration::from_secs(90));
    c.hold();
    assert_eq!(c.serving(), Name::B);
    c.event("restart a");
    c.restart(Name::A);
    c.wait_role(Name::A, "secondary", 0, ROLE_TIMEOUT);
    let resync = c.wait_in_sync(Name::B, Duration::from_secs(120));
    let regions = DISK_BYTES / REGION_BYTES;
    eprintln!("resync of the restarted node: {resync:?} of about {regions} regions");
    if let Some(total) = resync {
        assert!(
            total < regions / 2,
            "a full resync ({total} regions) where only the written regions were dirty"
        );
    }
    c.hold();
    c.finish(Some("kill"));
}

/// Issue 4, test 4: the primary cut off from its peer and the witness
/// (front-end and replication NICs down; the host's path stays): it fences
/// itself, b takes over, no acknowledged write is lost; links back: a
/// rejoins as Secondary.
#[test]
fn primary_isolated_fences_itself() {
    let Some(_guard) = lock() else { return };
    let mut c = Cluster::start("isolate");
    c.start_io();
    c.hold();
    let since_a = c.role_count(Name::A);
    let since_b = c.role_count(Name::B);
    c.event("isolate a (net0 and net1 down)");
    let at = epoch_ms();
    c.set_link(Name::A, 0, false);
    c.set_link(Name::A, 1, false);
    let fenced = c.wait_role(Name::A, "fenced", since_a, ROLE_TIMEOUT);
    let took_over = c.wait_role(Name::B, "primary", since_b, ROLE_TIMEOUT);
    assert!(
        took_over.epoch > fenced.epoch || fenced.reason == "lease-expired",
        "{fenced:?} {took_over:?}"
    );
    c.wait_io_flows(at, Duration::from_secs(90));
    c.hold();
    assert_eq!(c.serving(), Name::B);
    c.event("reconnect a");
    let since_a = c.role_count(Name::A);
    c.set_link(Name::A, 0, true);
    c.set_link(Name::A, 1, true);
    c.wait_role(Name::A, "secondary", since_a, ROLE_TIMEOUT);
    c.wait_in_sync(Name::B, Duration::from_secs(120));
    c.hold();
    c.finish(None);
}

/// Issue 4, test 5: the primary paused (QMP stop) until b has taken over,
/// then resumed: it acknowledges nothing (ackcheck: nothing lost), serves
/// no stale read (ackcheck reads during the run), and rejoins as Secondary.
#[test]
fn primary_paused_past_takeover() {
    let Some(_guard) = lock() else { return };
    let mut c = Cluster::start("pause");
    c.start_io();
    c.hold();
    let since_a = c.role_count(Name::A);
    let since_b = c.role_count(Name::B);
    c.event("pause a (primary)");
    c.qmp(Name::A, "stop", |q| q.stop());
    let took_over = c.wait_role(Name::B, "primary", since_b, ROLE_TIMEOUT);
    // Resumed at once: the host has not given up a's path yet (its
    // keep-alive timeout is longer), so commands wait at a, which must
    // refuse them now that b serves in a newer epoch.
    c.event("resume a");
    c.qmp(Name::A, "cont", |q| q.cont());
    c.wait_role(Name::A, "secondary", since_a, ROLE_TIMEOUT);
    for line in role_lines(&c.member(Name::A).log()).iter().skip(since_a) {
        assert!(
            line.role != "primary" || line.epoch < took_over.epoch,
            "a primary again after the pause: {line:?}"
        );
    }
    c.wait_in_sync(Name::B, Duration::from_secs(120));
    c.hold();
    assert_eq!(c.serving(), Name::B);
    c.finish(None);
}

/// Issue 4, test 6: the witness down: the pair keeps serving. Then the
/// secondary down too: the primary has no majority and fences itself
/// (docs/ha-protocol.md §13: "it cannot tell a dead peer from its own
/// isolation"); service comes back when b and the witness return.
#[test]
fn witness_down_then_secondary_down() {
    let Some(_guard) = lock() else { return };
    let mut c = Cluster::start("witness");
    c.start_io();
    c.hold();
    c.event("witness down");
    c.kill(Name::Witness);
    let at = epoch_ms();
    c.hold();
    c.wait_io_flows(at + HOLD.as_millis() as u64 - 2000, Duration::from_secs(30));
    assert_eq!(c.serving(), Name::A);
    let since_a = c.role_count(Name::A);
    c.event("secondary down (kill b)");
    c.kill(Name::B);
    let fenced = c.wait_role(Name::A, "fenced", since_a, ROLE_TIMEOUT);
    assert_eq!(fenced.reason, "lease-expired", "{fenced:?}");
    let status = c.status(Name::A);
    assert!(
        own_line(&status, Name::A).contains("ana:inaccessible"),
        "{status}"
    );
    c.event("restart b and the witness");
    c.restart(Name::Witness);
    c.restart(Name::B);
    let at = epoch_ms();
    c.wait_io_flows(at, Duration::from_secs(120));
    c.hold();
    c.finish(None);
}

/// Records the stalls of one kind of event for the benchmark section.
fn write_stalls(kind: &str, stalls: &[(String, Option<u64>, Option<u64>)]) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
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

fn median_max(values: &[u64]) -> (u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

/// The stall figures for docs/benchmarks.md (not a test): `TANDEM_HA_RUNS`
/// (default 10) planned switchovers, alternately by `demote` and by
/// `promote`, then as many kills of the primary (each followed by the
/// restart and resync of the killed node), with fio and ackcheck running.
/// Prints the largest completion gap of each, median and max.
/// `cargo test -p tandem-linux-guest --test ha -- --ignored stall_figures --nocapture`
#[test]
#[ignore = "benchmark (about 6 min): run with --ignored stall_figures"]
fn stall_figures() {
    let Some(_guard) = lock() else { return };
    let runs: usize = std::env::var("TANDEM_HA_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut c = Cluster::start_with("stalls", DEFAULT_TIMING);
    c.start_io();
    c.hold();
    let mut primary = Name::A;
    for i in 0..runs {
        c.switchover(primary, i % 2 == 1);
        primary = primary.peer();
        std::thread::sleep(Duration::from_secs(4));
    }
    let mut resyncs = Vec::new();
    for _ in 0..runs {
        let survivor = primary.peer();
        c.wait_in_sync(primary, Duration::from_secs(180));
        let since = c.role_count(survivor);
        c.event(&format!("kill -9 {} (primary)", primary.as_str()));
        let at = epoch_ms();
        c.kill(primary);
        c.wait_role(survivor, "primary", since, ROLE_TIMEOUT);
        c.wait_io_flows(at, Duration::from_secs(90));
        std::thread::sleep(Duration::from_secs(4));
        c.event(&format!("restart {}", primary.as_str()));
        let restarted = Instant::now();
        c.restart(primary);
        let regions = c.wait_in_sync(survivor, Duration::from_secs(180));
        // From the restart (boot included) to the pair back in sync.
        resyncs.push((regions.unwrap_or(0), restarted.elapsed().as_secs_f64()));
        primary = survivor;
    }
    c.stop_io();
    let mut lines = Vec::new();
    for (kind, prefix) in [
        ("baseline", "I/O started"),
        ("planned switchover", "switchover"),
        ("kill -9 of the primary", "kill"),
    ] {
        let stalls = c.stalls(prefix);
        let fio: Vec<u64> = stalls.iter().filter_map(|s| s.1).collect();
        let ck: Vec<u64> = stalls.iter().filter_map(|s| s.2).collect();
        let (fm, fx) = median_max(&fio);
        let (cm, cx) = median_max(&ck);
        lines.push(format!(
            "{kind}: {} runs: fio max gap median {fm} ms, max {fx} ms; ackcheck median {cm} ms, max {cx} ms; fio each {fio:?}",
            fio.len()
        ));
    }
    let copied: u64 = resyncs.iter().map(|(r, _)| r).sum();
    let seconds: f64 = resyncs.iter().map(|(_, s)| s).sum();
    lines.push(format!(
        "resync after restart: {copied} regions of {} KiB in {seconds:.1} s in all ({:.1} MiB/s, boot and reconnection included); each (regions, s): {resyncs:.1?}",
        REGION_BYTES / 1024,
        (copied * REGION_BYTES) as f64 / (1 << 20) as f64 / seconds.max(0.001)
    ));
    lines.push(format!("role changes:\n{}", c.role_report()));
    let text = lines.join("\n");
    eprintln!("{text}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ha-stall-figures.txt"),
        &text,
    );
    c.check_no_split_brain();
    c.host_command("exit", Duration::from_secs(30));
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

/// The lines of both data nodes' `status` that tell where a replicated
/// write's time goes: write and apply times (cumulative since the stream
/// connected), wake-ups per IRQ line, NIC and disk counters.
fn print_node_figures(c: &mut Cluster, primary: Name, prefix: &str) {
    for node in [primary, primary.peer()] {
        for line in c.status(node).lines() {
            let line = line.trim();
            let wanted = ["uptime", "write-time", "apply-time", "wakeups", "net", "reads="];
            if wanted.iter().any(|w| line.starts_with(w)) {
                eprintln!("{prefix} {}: {line}", node.as_str());
            }
        }
    }
}

/// Replicated against unreplicated writes, same primary, same run: 4 KiB
/// random writes at QD1 (latency) and QD32 (IOPS) while the pair is in sync,
/// then again after the secondary was killed and recorded Outdated (the
/// primary writes alone). Prints a table and writes it to
/// `$CARGO_TARGET_TMPDIR/ha-replication-figures.txt`.
/// `cargo test -p tandem-linux-guest --test ha -- --ignored replication_figures --nocapture`
#[test]
#[ignore = "benchmark (about 3 min): run with --ignored replication_figures"]
fn replication_figures() {
    let Some(_guard) = lock() else { return };
    let seconds: u64 = std::env::var("TANDEM_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start_with("replication", DEFAULT_TIMING);
    let primary = c.serving();
    c.wait_in_sync(primary, Duration::from_secs(180));
    let jobs = [("qd1", 1), ("qd32", 32)];
    let run = |c: &mut Cluster, label: &str| -> Vec<tandem_linux_guest::fio::FioResult> {
        jobs.iter()
            .map(|(name, depth)| {
                let job = format!("{label}-{name}");
                if label == "replicated" {
                    print_node_figures(c, primary, &format!("{job} before"));
                }
                let out = c.host_ok(
                    &format!("fio-json {job} randwrite 4k {depth} {seconds}"),
                    Duration::from_secs(seconds + 120),
                );
                let result = tandem_linux_guest::fio::parse(&job, &out).unwrap_or_else(|e| c.fail("fio", e));
                if label == "replicated" {
                    print_node_figures(c, primary, &job);
                }
                result
            })
            .collect()
    };
    let replicated = run(&mut c, "replicated");
    let secondary = primary.peer();
    let since = c.role_count(primary);
    c.event(&format!("kill -9 {} (secondary)", secondary.as_str()));
    c.kill(secondary);
    // The primary records its peer Outdated (a new epoch), then writes alone.
    c.wait_role(primary, "primary", since, ROLE_TIMEOUT);
    let alone = run(&mut c, "unreplicated");
    let mut lines = vec![
        "| 4 KiB random write | replicated | primary alone | ratio |".to_string(),
        "|---|---:|---:|---:|".to_string(),
    ];
    for (r, u) in replicated.iter().zip(&alone) {
        let name = r.job.trim_start_matches("replicated-");
        lines.push(format!(
            "| {name} IOPS | {:.0} | {:.0} | {:.2}× |",
            r.iops,
            u.iops,
            r.iops / u.iops.max(1.0)
        ));
        lines.push(format!(
            "| {name} latency p50 | {:.0} µs | {:.0} µs | {:.2}× |",
            r.clat_p50_us,
            u.clat_p50_us,
            r.clat_p50_us / u.clat_p50_us.max(1.0)
        ));
        lines.push(format!(
            "| {name} latency p99 | {:.0} µs | {:.0} µs | {:.2}× |",
            r.clat_p99_us,
            u.clat_p99_us,
            r.clat_p99_us / u.clat_p99_us.max(1.0)
        ));
    }
    let text = lines.join("\n");
    eprintln!("{text}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ha-replication-figures.txt"),
        &text,
    );
    c.host_command("exit", Duration::from_secs(30));
}
