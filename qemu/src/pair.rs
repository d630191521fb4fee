//! The pair setup in the background: `up`, `down`, `status`, `fault` and
//! `console` of the launcher.
//!
//! A setup lives in one directory (DIR): per node `<node>.pid` (written by
//! QEMU), `<node>.console.sock`, `<node>.console.log` (the previous boot's
//! in `<node>.console.log.1`), `<node>.qmp.sock`, `<node>.qemu.log`, the
//! data nodes' disks `<node>.disk.img` (kept by `down`), and `setup.json`
//! (the layout `up` used). QEMU runs detached (its own session, no parent to
//! die with), so nothing but a pid file ties it to the launcher; every
//! command finds the nodes again from DIR.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::accel::Accel;
use crate::console::{ConsoleClient, PROMPT, Ready};
use crate::error::{Error, Result};
use crate::layout::{
    DISCOVERY_PORT, FRONT_END_BRIDGE, NVME_PORT, NetNames, NodeName, PairLayout,
    REPLICATION_BRIDGE, Subnet,
};
use crate::node::Node;
use crate::pairnet::{self, Uplinks};
use crate::qmp::Qmp;
use crate::sys::{self, RawTerminal};
use crate::vm::{ConsoleMode, NetBackend, VmSpec};

/// Memory of the witness: it holds no data.
pub const WITNESS_MEMORY_MIB: u32 = 16;

/// How long QMP and console connections and commands may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Set (by the launcher's signal handler) when the user interrupts `up`.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// How often `up` looks at [`STOP_REQUESTED`] while nodes boot.
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// How long a QEMU process gets to end after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The setup's directory and the names derived from it.
#[derive(Clone, Debug)]
pub struct SetupDir {
    pub dir: PathBuf,
    pub names: NetNames,
}

impl SetupDir {
    /// `dir`, created if missing (and made absolute, so that the derived
    /// names do not depend on the working directory).
    pub fn create(dir: &Path) -> Result<SetupDir> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(SetupDir::open(dir))
    }

    /// `dir` as it is (it may not exist: then nothing runs there).
    pub fn open(dir: &Path) -> SetupDir {
        let dir = std::fs::canonicalize(dir)
            .or_else(|_| std::path::absolute(dir))
            .unwrap_or_else(|_| dir.to_path_buf());
        let names = NetNames::for_dir(&dir);
        SetupDir { dir, names }
    }

    /// The runtime files of `node` (a spec without devices; only its paths matter).
    pub fn files(&self, node: NodeName) -> VmSpec {
        VmSpec::new(node.as_str(), &self.dir, Path::new(""), "", Accel::Tcg)
    }

    pub fn disk(&self, node: NodeName) -> PathBuf {
        self.dir.join(format!("{node}.disk.img"))
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("setup.json")
    }

    /// QEMU's pid for `node` if it runs: the pid file names a live process
    /// (not a zombie) whose command line names this very pid file.
    pub fn running_pid(&self, node: NodeName) -> Option<u32> {
        let pid_file = self.files(node).pid_file();
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_is_ours(pid, &pid_file).then_some(pid)
    }

    fn isolated_file(&self) -> PathBuf {
        self.dir.join("isolated")
    }

    /// Nodes under `fault isolate`, in the order they were isolated.
    pub fn isolated(&self) -> Vec<NodeName> {
        parse_isolated(&std::fs::read_to_string(self.isolated_file()).unwrap_or_default())
    }

    /// Records the isolated nodes and sets the front-end bridge ports to
    /// match: isolated while any node is.
    fn set_isolated(&self, nodes: &[NodeName]) -> Result<()> {
        let path = self.isolated_file();
        if nodes.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            let text: String = nodes.iter().map(|n| format!("{n}\n")).collect();
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        for node in NodeName::ALL {
            pairnet::set_port_isolated(&self.names, &NetNames::tap(node, 0), !nodes.is_empty())?;
        }
        Ok(())
    }

    fn read_state(&self) -> Option<SavedSetup> {
        let text = std::fs::read_to_string(self.state_file()).ok()?;
        SavedSetup::from_json(&serde_json::from_str(&text).ok()?)
    }

    fn write_state(&self, state: &SavedSetup) -> Result<()> {
        let path = self.state_file();
        std::fs::write(&path, format!("{:#}\n", state.to_json()))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// Parses the `isolated` file: one node name per line; unknown lines are skipped.
fn parse_isolated(text: &str) -> Vec<NodeName> {
    let mut nodes = Vec::new();
    for node in text
        .lines()
        .filter_map(|l| l.trim().parse::<NodeName>().ok())
    {
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    nodes
}

/// True when `pid` is a live process started with `pid_file` on its
/// command line (guards against a reused pid).
fn process_is_ours(pid: u32, pid_file: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == pid_file.as_os_str().as_bytes())
}

/// Sends `signal` to `pid` and waits until it is gone (or a zombie).
fn signal_and_wait(pid: u32, pid_file: &Path, signal: sys::c_int, timeout: Duration) -> bool {
    // The pid was just checked to be our QEMU.
    sys::send_signal(pid, signal);
    let deadline = Instant::now() + timeout;
    while process_is_ours(pid, pid_file) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The layout and uplinks `up` used, so that a later `up` (restarting a
/// node) uses the same, and `status` can print addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SavedSetup {
    front_end: Subnet,
    replication: Subnet,
    uplinks: Uplinks,
}

impl SavedSetup {
    fn to_json(&self) -> Value {
        json!({
            "front_end": self.front_end.to_string(),
            "replication": self.replication.to_string(),
            "host_link": self.uplinks.host_link,
            "bridge": self.uplinks.user_bridge,
        })
    }

    fn from_json(value: &Value) -> Option<SavedSetup> {
        Some(SavedSetup {
            front_end: value.get("front_end")?.as_str()?.parse().ok()?,
            replication: value.get("replication")?.as_str()?.parse().ok()?,
            uplinks: Uplinks {
                host_link: value.get("host_link")?.as_bool()?,
                user_bridge: value.get("bridge")?.as_str().map(str::to_string),
            },
        })
    }
}

/// What `up` needs besides the image.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub dir: PathBuf,
    pub layout: PairLayout,
    pub uplinks: Uplinks,
    pub accel: Accel,
    pub disk_size: u64,
    pub memory_mib: u32,
    /// Extra kernel command-line words per node (a, b, witness).
    pub append: [String; 3],
    /// How long all three may take to print `tandem: ready`.
    pub ready_timeout: Duration,
}

impl UpOptions {
    /// The defaults of `cargo tandem up`: the documented layout with the HA
    /// keys, this machine on the front-end, 1 GiB disks, 64 MiB data nodes,
    /// 60 s to get ready.
    pub fn new(dir: &Path, accel: Accel) -> UpOptions {
        UpOptions {
            dir: dir.to_path_buf(),
            layout: PairLayout::default(),
            uplinks: Uplinks {
                host_link: true,
                user_bridge: None,
            },
            accel,
            disk_size: 1 << 30,
            memory_mib: crate::vm::DEFAULT_MEMORY_MIB,
            append: Default::default(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// One node as `up` left it.
#[derive(Clone, Debug)]
pub struct NodeReport {
    pub node: NodeName,
    pub pid: Option<u32>,
    /// `Some` if started by this `up` (`None`: it was running already).
    pub ready: Option<Ready>,
    pub cmdline: String,
}

#[derive(Clone, Debug)]
pub struct UpReport {
    pub setup: SetupDir,
    pub layout: PairLayout,
    pub uplinks: Uplinks,
    pub network_created: bool,
    pub nodes: Vec<NodeReport>,
    pub disks_created: Vec<PathBuf>,
}

/// Starts whatever of the setup in `options.dir` is not running: the
/// network, then every node that is not running, and waits until each node
/// it started printed `tandem: ready`. Running nodes are left alone, so
/// `up` after `fault kill` restarts the killed node. On failure, the nodes
/// started by this call are stopped (and the network removed if this call
/// made it and nothing else runs); the logs stay in DIR.
pub fn up(image: &Path, options: &UpOptions) -> Result<UpReport> {
    options.layout.validate()?;
    if !sys::is_root() {
        return Err(Error::Setup(
            "`up` needs root: it creates a network namespace with bridges, taps \
             and veth pairs for the pair's segments"
                .into(),
        ));
    }
    let setup = SetupDir::create(&options.dir)?;
    let mut keyed = options.clone();
    if keyed.layout.ha_keys && keyed.layout.pair_key.is_none() {
        keyed.layout.pair_key = Some(crate::pairkey::load_or_create(&setup.dir)?);
    }
    let options = &keyed;
    let running: Vec<(NodeName, u32)> = NodeName::ALL
        .iter()
        .filter_map(|&n| setup.running_pid(n).map(|pid| (n, pid)))
        .collect();
    let wanted = SavedSetup {
        front_end: options.layout.front_end,
        replication: options.layout.replication,
        uplinks: options.uplinks.clone(),
    };
    let network_exists = pairnet::netns_exists(&setup.names.netns);
    if network_exists {
        if let Some(saved) = setup.read_state().filter(|saved| *saved != wanted) {
            return Err(Error::Setup(format!(
                "the setup in {} is up with front-end {}, replication {}, {}{}; \
                 run `cargo tandem down` first to change them",
                setup.dir.display(),
                saved.front_end,
                saved.replication,
                if saved.uplinks.host_link {
                    "host link"
                } else {
                    "no host link"
                },
                saved
                    .uplinks
                    .user_bridge
                    .map(|b| format!(", bridge {b}"))
                    .unwrap_or_default(),
            )));
        }
    } else if !running.is_empty() {
        let names: Vec<&str> = running.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::Setup(format!(
            "node(s) {} run without their network namespace {}; \
             run `cargo tandem down` first",
            names.join(", "),
            setup.names.netns
        )));
    }
    let network_created = if network_exists {
        false
    } else {
        pairnet::create(&options.layout, &setup.names, &options.uplinks)?;
        // A fresh network has no isolated ports.
        let _ = std::fs::remove_file(setup.isolated_file());
        true
    };
    setup.write_state(&wanted)?;

    let result = start_missing(image, options, &setup);
    match result {
        Ok((nodes, disks_created)) => Ok(UpReport {
            setup,
            layout: options.layout.clone(),
            uplinks: options.uplinks.clone(),
            network_created,
            nodes,
            disks_created,
        }),
        Err(e) => {
            let anything_runs = NodeName::ALL
                .iter()
                .any(|&n| setup.running_pid(n).is_some());
            if network_created && !anything_runs {
                let _ = pairnet::destroy(&setup.names);
                let _ = std::fs::remove_file(setup.state_file());
            }
            Err(e)
        }
    }
}

/// HA timers `up` passes under TCG (milliseconds): twice the image's
/// heartbeat interval and 1.5–1.6 times its failure timeout and lease, for
/// guests that a busy host deschedules, but a takeover that still resets a
/// Linux host's connections to a dead node before that host sends it a Keep
/// Alive — which Linux, with Traffic Based Keep Alive, does at the second
/// KATO/4 tick after the last completion (1.25–2.5 s with the default KATO
/// of 5 s), and then waits a whole KATO for (`docs/benchmarks.md`).
pub const TCG_HA_TIMING: &str = "hb_interval=100 hb_timeout=800 lease=600";

fn start_missing(
    image: &Path,
    options: &UpOptions,
    setup: &SetupDir,
) -> Result<(Vec<NodeReport>, Vec<PathBuf>)> {
    let mut started: Vec<(NodeName, Node)> = Vec::new();
    let mut reports = Vec::new();
    let mut disks_created = Vec::new();
    for (i, node) in NodeName::ALL.into_iter().enumerate() {
        // The image's default HA timers suit KVM; TCG guests on a busy host
        // get descheduled for longer (see TCG_HA_TIMING). Words the user
        // appends still win (they come later).
        let extra = match options.accel {
            Accel::Tcg => format!("{TCG_HA_TIMING} {}", options.append[i]),
            _ => options.append[i].clone(),
        };
        let words = options.layout.cmdline(node, &extra);
        let cmdline = words.redacted();
        if let Some(pid) = setup.running_pid(node) {
            reports.push(NodeReport {
                node,
                pid: Some(pid),
                ready: None,
                cmdline,
            });
            continue;
        }
        let in_node = |e: Error| Error::Node {
            node: node.to_string(),
            source: Box::new(e),
        };
        let mut spec = VmSpec::new(
            node.as_str(),
            &setup.dir,
            image,
            &words.to_string(),
            options.accel,
        );
        spec.memory_mib = if node.has_disk() {
            options.memory_mib
        } else {
            WITNESS_MEMORY_MIB
        };
        if node.has_disk() {
            let disk = setup.disk(node);
            if !disk.exists() {
                crate::disk::create_sparse(&disk, options.disk_size).map_err(in_node)?;
                disks_created.push(disk.clone());
            }
            spec = spec.disk(&disk);
        }
        for nic in 0..node.nic_count() {
            spec = spec.nic(
                node.number(),
                NetBackend::Tap {
                    ifname: NetNames::tap(node, nic),
                },
            );
        }
        spec.console = ConsoleMode::Socket;
        spec.netns = Some(setup.names.netns.clone());
        spec.die_with_parent = false;
        // Keep the previous boot's console (a killed node's last words).
        let log = spec.console_log();
        if log.exists() {
            let _ = std::fs::rename(&log, log.with_extension("log.1"));
        }
        let child = Node::spawn(spec).map_err(in_node)?;
        started.push((node, child));
        reports.push(NodeReport {
            node,
            pid: None,
            ready: None,
            cmdline,
        });
    }
    // Started nodes boot in parallel; wait for each in turn, all within one
    // deadline. Dropping `started` on an error kills them.
    let deadline = Instant::now() + options.ready_timeout;
    for (node, child) in started.iter_mut() {
        let in_node = |e: Error| Error::Node {
            node: node.to_string(),
            source: Box::new(e),
        };
        // Waits in slices, so that an interrupted `up` stops the nodes it
        // started (they are detached from the terminal's signals).
        let ready = loop {
            if STOP_REQUESTED.load(Ordering::SeqCst) {
                return Err(Error::Setup(
                    "interrupted; stopped the nodes this `up` started".into(),
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match child.wait_ready(left.min(WAIT_SLICE)) {
                Ok(ready) => break ready,
                Err(Error::Timeout { .. }) if left > WAIT_SLICE => continue,
                Err(Error::Timeout { console_tail, .. }) => {
                    return Err(in_node(Error::Timeout {
                        what: "`tandem: ready`".into(),
                        waited: options.ready_timeout,
                        console_tail,
                    }));
                }
                Err(e) => return Err(with_ha_hint(in_node(e), &options.layout)),
            }
        };
        let report = reports
            .iter_mut()
            .find(|r| r.node == *node)
            .expect("every started node has a report");
        report.ready = Some(ready);
        report.pid = Some(child.pid());
    }
    // A restarted node that is under `fault isolate` comes back isolated.
    let isolated = setup.isolated();
    for (node, child) in &started {
        if isolated.contains(node) {
            child
                .qmp(CONTROL_TIMEOUT)
                .and_then(|mut qmp| qmp.set_link("nic1", false))
                .map_err(|e| Error::Node {
                    node: node.to_string(),
                    source: Box::new(e),
                })?;
        }
    }
    for (_, child) in started {
        child.detach();
    }
    Ok((reports, disks_created))
}

/// Adds a hint when an image rejects the HA keys it does not know yet.
fn with_ha_hint(e: Error, layout: &PairLayout) -> Error {
    let text = e.to_string();
    if layout.ha_keys && text.contains("unknown key") {
        const HA_KEYS: [&str; 9] = [
            "role:",
            "node:",
            "peer_repl:",
            "witness:",
            "witness_repl:",
            "node_a:",
            "node_b:",
            "node_a_repl:",
            "node_b_repl:",
        ];
        if HA_KEYS
            .iter()
            .any(|k| text.contains(&format!("config error: {k}")))
        {
            return Error::Setup(format!(
                "{text}\nthis image does not know the HA keys yet: \
                 `cargo tandem up --no-ha` starts the nodes without them"
            ));
        }
    }
    e
}

/// Renders `up`'s result: the portals on stdout, details on stderr.
pub fn render_up(report: &UpReport) -> (String, String) {
    let layout = &report.layout;
    let mut out = String::new();
    let mut err = String::new();
    let dir = &report.setup.dir;
    if report.network_created {
        err.push_str(&format!(
            "tandem: network namespace {}: bridge fe = front-end {}, bridge repl = replication {}\n",
            report.setup.names.netns, layout.front_end, layout.replication
        ));
    }
    for disk in &report.disks_created {
        err.push_str(&format!(
            "tandem: created disk {} (sparse)\n",
            disk.display()
        ));
    }
    for r in &report.nodes {
        let state = match &r.ready {
            Some(ready) => format!("ready in {} ms", ready.ms),
            None => "already running".into(),
        };
        let pid = r
            .pid
            .map(|p| format!(" (QEMU pid {p})"))
            .unwrap_or_default();
        err.push_str(&format!(
            "tandem: {:<7} {state}{pid}; console log {}\n",
            r.node.as_str(),
            dir.join(format!("{}.console.log", r.node)).display()
        ));
        err.push_str(&format!(
            "tandem: {:<7} cmdline: {}\n",
            r.node.as_str(),
            r.cmdline
        ));
    }
    if report.uplinks.host_link {
        err.push_str(&format!(
            "tandem: this machine is {} on the front-end (interface {})\n",
            layout.front_end.cidr(layout.host_address()),
            report.setup.names.host_link
        ));
    }
    if let Some(bridge) = &report.uplinks.user_bridge {
        err.push_str(&format!(
            "tandem: the front-end segment is on bridge {bridge} (via {})\n",
            report.setup.names.user_link
        ));
    }
    out.push_str("front-end portals (NVMe/TCP, discovery):\n");
    for node in [NodeName::A, NodeName::B] {
        let address = layout.front_end_address(node);
        out.push_str(&format!(
            "  {node}  {address}:{NVME_PORT}  {address}:{DISCOVERY_PORT}\n"
        ));
    }
    out.push_str(&format!(
        "  witness  {}\n",
        layout.front_end_address(NodeName::Witness)
    ));
    out.push_str(&format!(
        "subsystem {}; consoles: cargo tandem console a|b|witness{}\n",
        layout.nqn,
        dir_flag(dir)
    ));
    (out, err)
}

/// ` --dir DIR` unless DIR is the default.
fn dir_flag(dir: &Path) -> String {
    let default = SetupDir::open(&default_dir()).dir;
    if dir == default {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}

/// `target/tandem-up` in the workspace.
pub fn default_dir() -> PathBuf {
    crate::image::workspace_root()
        .join("target")
        .join("tandem-up")
}

/// What `down` did.
#[derive(Clone, Debug, Default)]
pub struct DownReport {
    /// Nodes whose QEMU was stopped, with its pid.
    pub stopped: Vec<(NodeName, u32)>,
    pub network_removed: bool,
}

/// Stops every node of the setup in `dir` (SIGTERM, then SIGKILL after
/// [`EXIT_TIMEOUT`]) and removes its network. Keeps disks and logs.
/// Idempotent.
pub fn down(dir: &Path) -> Result<DownReport> {
    let setup = SetupDir::open(dir);
    let mut report = DownReport::default();
    for node in NodeName::ALL {
        let files = setup.files(node);
        if let Some(pid) = setup.running_pid(node) {
            let pid_file = files.pid_file();
            if !signal_and_wait(pid, &pid_file, sys::SIGTERM, EXIT_TIMEOUT)
                && !signal_and_wait(pid, &pid_file, sys::SIGKILL, EXIT_TIMEOUT)
            {
                return Err(Error::Node {
                    node: node.to_string(),
                    source: Box::new(Error::Setup(format!(
                        "QEMU (pid {pid}) did not end after SIGKILL"
                    ))),
                });
            }
            report.stopped.push((node, pid));
        }
        for stale in [files.pid_file(), files.console_socket(), files.qmp_socket()] {
            let _ = std::fs::remove_file(stale);
        }
    }
    report.network_removed = pairnet::destroy(&setup.names)?;
    let _ = std::fs::remove_file(setup.state_file());
    let _ = std::fs::remove_file(setup.isolated_file());
    Ok(report)
}

/// A node's state for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    Stopped,
    /// QEMU runs; `vm` is QMP's run state (`running`, `paused`, ...) or
    /// why it could not be read.
    Running {
        pid: u32,
        vm: String,
    },
}

pub fn status(dir: &Path) -> Vec<(NodeName, NodeState)> {
    let setup = SetupDir::open(dir);
    NodeName::ALL
        .iter()
        .map(|&node| {
            let state = match setup.running_pid(node) {
                None => NodeState::Stopped,
                Some(pid) => {
                    let vm = Qmp::connect(&setup.files(node).qmp_socket(), CONTROL_TIMEOUT)
                        .and_then(|mut q| q.status())
                        .unwrap_or_else(|e| format!("unknown ({e})"));
                    NodeState::Running { pid, vm }
                }
            };
            (node, state)
        })
        .collect()
}

/// Renders `status` (one line per node, then the network).
pub fn render_status(dir: &Path, states: &[(NodeName, NodeState)]) -> String {
    let setup = SetupDir::open(dir);
    let saved = setup.read_state();
    let mut out = String::new();
    for (node, state) in states {
        let address = saved
            .as_ref()
            .map(|s| format!("  {}", s.front_end.host(node.number().into())))
            .unwrap_or_default();
        match state {
            NodeState::Stopped => out.push_str(&format!("{:<8} stopped{address}\n", node.as_str())),
            NodeState::Running { pid, vm } => out.push_str(&format!(
                "{:<8} {vm} (QEMU pid {pid}){address}\n",
                node.as_str()
            )),
        }
    }
    if pairnet::netns_exists(&setup.names.netns) {
        out.push_str(&format!(
            "network  namespace {} (bridges {FRONT_END_BRIDGE} = front-end, \
             {REPLICATION_BRIDGE} = replication)\n",
            setup.names.netns
        ));
    } else {
        out.push_str("network  none\n");
    }
    let isolated = setup.isolated();
    if !isolated.is_empty() {
        let names: Vec<&str> = isolated.iter().map(|n| n.as_str()).collect();
        out.push_str(&format!("isolated {}\n", names.join(", ")));
    }
    out
}

/// A fault `fault` injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the node's QEMU.
    Kill,
    /// QMP `stop`: the VM's CPUs stop, its clock with them.
    Pause,
    /// QMP `cont`.
    Resume,
    /// QMP `set_link` down/up on the NIC(s): the guest sees link loss.
    LinkDown,
    LinkUp,
    /// Cuts the node off from the other two nodes on every link while the
    /// front-end hosts (this machine, `--bridge`) still reach it: its
    /// replication NIC goes down (QMP) and the front-end bridge ports of
    /// all three nodes become isolated ports, which reach only the hosts'
    /// ports. (So the other two lose their front-end link to each other as
    /// well, and keep the replication link.)
    Isolate,
    /// Undoes `Isolate` for the node; the front-end ports stay isolated
    /// while another node is.
    Rejoin,
}

impl std::str::FromStr for Fault {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "resume" => Fault::Resume,
            "link-down" => Fault::LinkDown,
            "link-up" => Fault::LinkUp,
            "isolate" => Fault::Isolate,
            "rejoin" => Fault::Rejoin,
            other => {
                return Err(Error::Usage(format!(
                    "unknown fault `{other}` \
                     (have: kill, pause, resume, link-down, link-up, isolate, rejoin)"
                )));
            }
        })
    }
}

/// Injects `fault` into `node` of the setup in `dir`; `nic` limits a link
/// fault to one NIC (default: all of the node's NICs). Returns what was done.
pub fn fault(dir: &Path, fault: Fault, node: NodeName, nic: Option<usize>) -> Result<String> {
    let setup = SetupDir::open(dir);
    let in_node = |e: Error| Error::Node {
        node: node.to_string(),
        source: Box::new(e),
    };
    let Some(pid) = setup.running_pid(node) else {
        return Err(in_node(Error::Setup(format!(
            "not running (in {}; start it with `cargo tandem up`)",
            setup.dir.display()
        ))));
    };
    let files = setup.files(node);
    if fault == Fault::Kill {
        if !signal_and_wait(pid, &files.pid_file(), sys::SIGKILL, EXIT_TIMEOUT) {
            return Err(in_node(Error::Setup(format!(
                "QEMU (pid {pid}) did not end after SIGKILL"
            ))));
        }
        let _ = std::fs::remove_file(files.pid_file());
        return Ok(format!("killed {node} (QEMU pid {pid})"));
    }
    let mut qmp = Qmp::connect(&files.qmp_socket(), CONTROL_TIMEOUT).map_err(in_node)?;
    match fault {
        Fault::Pause => {
            qmp.stop().map_err(in_node)?;
            Ok(format!("paused {node}"))
        }
        Fault::Resume => {
            qmp.cont().map_err(in_node)?;
            Ok(format!("resumed {node}"))
        }
        Fault::LinkDown | Fault::LinkUp => {
            let up = fault == Fault::LinkUp;
            let nics: Vec<usize> = match nic {
                Some(n) => vec![n],
                None => (0..node.nic_count()).collect(),
            };
            for &n in &nics {
                qmp.set_link(&format!("nic{n}"), up).map_err(in_node)?;
            }
            let list: Vec<String> = nics.iter().map(|n| format!("net{n}")).collect();
            Ok(format!(
                "{node}: link {} on {}",
                if up { "up" } else { "down" },
                list.join(", ")
            ))
        }
        Fault::Isolate | Fault::Rejoin => {
            let isolate = fault == Fault::Isolate;
            qmp.set_link("nic1", !isolate).map_err(in_node)?;
            let mut isolated = setup.isolated();
            isolated.retain(|&n| n != node);
            if isolate {
                isolated.push(node);
            }
            setup.set_isolated(&isolated)?;
            Ok(if isolate {
                format!(
                    "{node} isolated from the other nodes (replication link down, \
                     front-end ports isolated; the front-end hosts still reach every node)"
                )
            } else {
                format!("{node} rejoined (replication link up)")
            })
        }
        Fault::Kill => unreachable!("handled above"),
    }
}

/// Counts console prompts in a byte stream that arrives in pieces.
#[derive(Debug, Default)]
pub struct PromptCounter {
    tail: Vec<u8>,
    pub prompts: usize,
}

impl PromptCounter {
    pub fn feed(&mut self, bytes: &[u8]) {
        let needle = PROMPT.as_bytes();
        self.tail.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.tail[start..]
            .windows(needle.len())
            .position(|w| w == needle)
        {
            self.prompts += 1;
            start += pos + needle.len();
        }
        // Keep what could be the start of a prompt split across pieces.
        let keep_from = start.max(self.tail.len().saturating_sub(needle.len() - 1));
        self.tail.drain(..keep_from);
    }
}

/// The byte that ends an interactive console session (Ctrl-]).
pub const ESCAPE: u8 = 0x1d;

/// How long a piped console session waits for the answers to its commands
/// after its input ended.
const PIPED_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `console NODE`: connects this terminal (or pipe) to the node's console.
/// Interactive (stdin a terminal): raw mode, Ctrl-] ends. Piped: each line
/// is sent as a command; after the input ends, waits for the answer to the
/// last one (its prompt) and returns. The console is drained all the time.
pub fn console(dir: &Path, node: NodeName) -> Result<()> {
    let setup = SetupDir::open(dir);
    if setup.running_pid(node).is_none() {
        return Err(Error::Node {
            node: node.to_string(),
            source: Box::new(Error::Setup(format!(
                "not running (in {}; start it with `cargo tandem up`)",
                setup.dir.display()
            ))),
        });
    }
    let socket = setup.files(node).console_socket();
    let mut client = ConsoleClient::connect(&socket, CONTROL_TIMEOUT)?;
    let mut writer = client.writer()?;
    let interactive = sys::stdin_is_terminal();
    let _raw = if interactive {
        eprintln!("tandem: console of {node} (Ctrl-] quits)\r");
        Some(RawTerminal::enter().map_err(|e| Error::io("putting the terminal in raw mode", e))?)
    } else {
        None
    };
    // Commands sent, and whether the input has ended (then: how many).
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let input_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let sent = sent.clone();
        let input_done = input_done.clone();
        std::thread::Builder::new()
            .name("console-input".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 1024];
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut bytes = buf[..n].to_vec();
                    if interactive {
                        if let Some(pos) = bytes.iter().position(|&b| b == ESCAPE) {
                            bytes.truncate(pos);
                            let _ = writer.write_all(&bytes);
                            break;
                        }
                    } else {
                        // The console ends a command on CR, as a terminal sends it.
                        for b in bytes.iter_mut() {
                            if *b == b'\n' {
                                *b = b'\r';
                            }
                        }
                        sent.fetch_add(
                            bytes.iter().filter(|&&b| b == b'\r').count(),
                            Ordering::SeqCst,
                        );
                    }
                    if writer.write_all(&bytes).is_err() {
                        break;
                    }
                }
                input_done.store(true, Ordering::SeqCst);
            })
            .map_err(|e| Error::io("starting the console input thread", e))?;
    }
    let mut stdout = std::io::stdout().lock();
    let mut prompts = PromptCounter::default();
    let mut input_ended_at: Option<Instant> = None;
    loop {
        use std::sync::atomic::Ordering;
        let chunk = client.receive(Duration::from_millis(100))?;
        let Some(bytes) = chunk else {
            let _ = stdout.flush();
            drop(_raw);
            eprintln!("\ntandem: the console of {node} closed (QEMU ended)");
            return Ok(());
        };
        if !bytes.is_empty() {
            prompts.feed(&bytes);
            let _ = stdout.write_all(&bytes);
            let _ = stdout.flush();
        }
        if input_done.load(Ordering::SeqCst) {
            if interactive {
                return Ok(());
            }
            let started = *input_ended_at.get_or_insert_with(Instant::now);
            if prompts.prompts >= sent.load(Ordering::SeqCst) {
                return Ok(());
            }
            if started.elapsed() >= PIPED_ANSWER_TIMEOUT {
                return Err(Error::Node {
                    node: node.to_string(),
                    source: Box::new(Error::Timeout {
                        what: "the console's answer to the last command".into(),
                        waited: PIPED_ANSWER_TIMEOUT,
                        console_tail: String::new(),
                    }),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_counted_across_pieces() {
        let mut c = PromptCounter::default();
        c.feed(b"status\r\nuptime 1 s\r\ntand");
        assert_eq!(c.prompts, 0);
        c.feed(b"em> ");
        assert_eq!(c.prompts, 1);
        c.feed(b"help\r\n...\r\ntandem> x\r\ntandem> ");
        assert_eq!(c.prompts, 3);
        c.feed(b"tandem>");
        assert_eq!(c.prompts, 3);
    }

    #[test]
    fn isolated_nodes_parse_without_duplicates() {
        assert_eq!(parse_isolated(""), vec![]);
        assert_eq!(
            parse_isolated("b\nwitness\nb\nbogus\n"),
            vec![NodeName::B, NodeName::Witness]
        );
    }

    #[test]
    fn faults_parse() {
        assert_eq!("isolate".parse::<Fault>().unwrap(), Fault::Isolate);
        assert_eq!("rejoin".parse::<Fault>().unwrap(), Fault::Rejoin);
        assert_eq!("kill".parse::<Fault>().unwrap(), Fault::Kill);
        assert_eq!("link-down".parse::<Fault>().unwrap(), Fault::LinkDown);
        assert!("reboot".parse::<Fault>().is_err());
    }

    #[test]
    fn saved_setup_round_trips() {
        let saved = SavedSetup {
            front_end: "10.1.0.0/24".parse().unwrap(),
            replication: "10.2.0.0/16".parse().unwrap(),
            uplinks: Uplinks {
                host_link: false,
                user_bridge: Some("br0".into()),
            },
        };
        assert_eq!(SavedSetup::from_json(&saved.to_json()), Some(saved));
    }

    #[test]
    fn a_dead_or_foreign_pid_is_not_a_running_node() {
        let dir = crate::TempDir::new("pair-unit").unwrap();
        let setup = SetupDir::open(dir.path());
        assert_eq!(setup.running_pid(NodeName::A), None);
        // Our own pid is alive but was not started with that pid file.
        std::fs::write(
            setup.files(NodeName::A).pid_file(),
            std::process::id().to_string(),
        )
        .unwrap();
        assert_eq!(setup.running_pid(NodeName::A), None);
        std::fs::write(setup.files(NodeName::B).pid_file(), "garbage").unwrap();
        assert_eq!(setup.running_pid(NodeName::B), None);
    }

    #[test]
    fn a_missing_ha_key_gets_a_hint() {
        let layout = PairLayout::default();
        let e = Error::Node {
            node: "a".into(),
            source: Box::new(Error::Console(
                "the image did not get ready: tandem: config error: node: unknown key".into(),
            )),
        };
        let text = with_ha_hint(e, &layout).to_string();
        assert!(
            text.contains("node a: ") && text.contains("--no-ha"),
            "{text}"
        );
        let other = Error::Console("tandem: config error: log: unknown key".into());
        assert!(!with_ha_hint(other, &layout).to_string().contains("--no-ha"));
    }

    #[test]
    fn down_on_an_empty_directory_does_nothing() {
        let dir = crate::TempDir::new("pair-down-unit").unwrap();
        let report = down(&dir.path().join("never-up")).unwrap();
        assert!(report.stopped.is_empty() && !report.network_removed);
    }
}
