//! The launcher's command line (pure: parsing only).

use std::path::PathBuf;

use crate::accel::AccelChoice;
use crate::disk::parse_size;
use crate::error::{Error, Result};
use crate::layout::{DEFAULT_FRONT_END, DEFAULT_PAIR_NQN, DEFAULT_REPLICATION, NodeName, Subnet};
use crate::pair::Fault;
use crate::vm::{DEFAULT_MEMORY_MIB, GUEST_DISCOVERY_PORT, GUEST_NVME_PORT};

pub const USAGE: &str = "\
usage: cargo tandem <command> [options]

commands:
  image                 build the image; prints its absolute path last
  run [options]         boot one node; its serial console is this terminal
                        (Ctrl-A x quits QEMU, Ctrl-A c toggles QEMU's monitor)
  bench boot [options]  measure boot time, image size, smallest memory and
                        idle CPU under TCG; writes the Boot section of
                        docs/benchmarks.md
  bench nvme --address A --subnqn NQN [options]
                        load any NVMe/TCP target from this machine (no VM):
                        IOPS, MiB/s, latency percentiles per job
  up [options]          start nodes a, b and the witness in the background
                        (whichever is not running), wait until all are ready,
                        print the front-end portals
  console NODE          this terminal on NODE's console (a, b, witness);
                        Ctrl-] quits; piped input runs one command per line
  fault F NODE [NIC]    F: kill (SIGKILL of QEMU), pause, resume (QMP
                        stop/cont), link-down, link-up (QMP set_link on NIC
                        net0/net1, default every NIC of the node), isolate
                        (cut NODE off from the other nodes on both segments;
                        front-end hosts still reach it), rejoin
  status                which nodes run (running/paused) and the network
  down                  stop every node and remove the network `up` made;
                        disks and logs stay in DIR
  help                  this text

run options:
  --accel kvm|tcg|auto  accelerator (default auto: KVM only where it really
                        runs guests, else TCG)
  --disk FILE           use FILE as the node's disk (kept); default: a fresh
                        sparse disk, removed when QEMU exits
  --disk-size SIZE      size of the fresh disk, e.g. 512M, 4G (default 1G)
  --mem MB              guest memory in MiB (default 64)
  --port-base N         host ports N, N+1, N+2 for NVMe/TCP, discovery and
                        status (default 4420, 8009, 8100)
  --append CMDLINE      the image's kernel command line (key=value words)

bench boot options:
  --runs N              boots to take the median of (default 10)
  --output FILE         markdown file to update (default docs/benchmarks.md)
  --no-write            print the section without writing it

bench nvme options:
  --address A           the target's address or host name (required)
  --port P              its NVMe/TCP port (default 4420)
  --subnqn NQN          the subsystem to connect to (required)
  --hostnqn NQN         the host NQN to connect as (default a uuid NQN)
  --nsid N              the namespace (default 1)
  --jobs LIST           comma-separated, in order (default all): randwrite-4k,
                        randread-4k, randrw-4k (70 % reads), write-128k,
                        read-128k (sequential), qd1-randread-4k (latency:
                        always 1 connection at depth 1), qd1-randwrite-4k
  --connections LIST    I/O queues, one TCP connection each (default 1); a
                        comma-separated list runs every job at each
  --depth LIST          commands outstanding per queue (default 32); a list
                        as for --connections (a sweep)
  --rate IOPS           open loop: start IOPS commands a second in all
                        (latency counts from when each was due); default
                        closed loop (keep --depth outstanding)
  --runtime SECS        measured time per job (default 10)
  --ramp SECS           unmeasured time before it (default 1)
  --range SIZE          use only the first SIZE of the namespace, e.g. 1G
  --verify              write self-describing blocks; check every read
                        (and every block read after this run wrote it)
  --json FILE           also write the results as JSON
  --quiet               no progress line per second

up, console, fault, status, down options:
  --dir DIR             the setup's directory: pid files, sockets, console
                        logs DIR/<node>.console.log, disks DIR/<node>.disk.img
                        (default target/tandem-up)

up options:
  --accel kvm|tcg|auto  as for run
  --disk-size SIZE      size of a fresh disk of a and b (default 1G); existing
                        disks in DIR are kept
  --mem MB              memory of a and b (default 64; the witness has 16)
  --front-end-net CIDR  front-end segment, net0 (default 10.77.0.0/24): a .1,
                        b .2, witness .3, this machine the last address
  --replication-net CIDR  replication segment, net1 (default
                        10.78.0.0/24): a .1, b .2, witness .3
  --bridge BR           also attach the front-end segment to the existing
                        bridge BR (for other VMs, e.g. a Linux host)
  --no-host-link        do not give this machine an address on the front-end
  --nqn NQN             subsystem NQN of the pair (default
                        nqn.2026-11.io.tandem:storage)
  --no-ha               leave out the HA keys (node=, peer_repl=, witness=,
                        witness_repl=, role=, node_a=, node_b=, node_a_repl=,
                        node_b_repl=); also TANDEM_UP_HA=0
  --append CMDLINE      extra kernel command-line words for every node
  --append-a, --append-b, --append-witness CMDLINE
                        extra words for that node (after --append); extra
                        words replace keys of the same name
  --timeout SECS        how long the nodes may take to get ready (default 60)";

/// Host ports forwarded to the node's front-end services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPorts {
    pub nvme: u16,
    pub discovery: u16,
    pub status: u16,
}

impl Default for HostPorts {
    fn default() -> Self {
        HostPorts {
            nvme: GUEST_NVME_PORT,
            discovery: GUEST_DISCOVERY_PORT,
            status: crate::cmdline::DEFAULT_STATUS_PORT,
        }
    }
}

impl HostPorts {
    /// `base`, `base + 1`, `base + 2`.
    pub fn from_base(base: u16) -> Result<Self> {
        if base == 0 || base > u16::MAX - 2 {
            return Err(Error::Usage(format!(
                "--port-base: {base} leaves no room for 3 ports (1..=65533)"
            )));
        }
        Ok(HostPorts {
            nvme: base,
            discovery: base + 1,
            status: base + 2,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub accel: AccelChoice,
    pub disk: Option<PathBuf>,
    pub disk_size: u64,
    pub memory_mib: u32,
    pub ports: HostPorts,
    pub append: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            accel: AccelChoice::Auto,
            disk: None,
            disk_size: 1 << 30,
            memory_mib: DEFAULT_MEMORY_MIB,
            ports: HostPorts::default(),
            append: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    pub runs: usize,
    pub output: Option<PathBuf>,
    pub write: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            runs: 10,
            output: None,
            write: true,
        }
    }
}

/// `up` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpArgs {
    pub dir: Option<PathBuf>,
    pub accel: AccelChoice,
    pub disk_size: u64,
    pub memory_mib: u32,
    pub front_end: Subnet,
    pub replication: Subnet,
    pub bridge: Option<String>,
    pub host_link: bool,
    pub nqn: String,
    pub ha_keys: bool,
    /// Extra words for every node, then for a, b and the witness.
    pub append_all: String,
    pub append: [String; 3],
    pub ready_timeout_secs: u64,
}

impl UpArgs {
    /// Extra words for a, b and the witness: `--append`, then the node's own.
    pub fn node_appends(&self) -> [String; 3] {
        self.append
            .clone()
            .map(|words| format!("{} {words}", self.append_all).trim().to_string())
    }
}

impl Default for UpArgs {
    fn default() -> Self {
        UpArgs {
            dir: None,
            accel: AccelChoice::Auto,
            disk_size: 1 << 30,
            memory_mib: DEFAULT_MEMORY_MIB,
            front_end: DEFAULT_FRONT_END,
            replication: DEFAULT_REPLICATION,
            bridge: None,
            host_link: true,
            nqn: DEFAULT_PAIR_NQN.into(),
            ha_keys: true,
            append_all: String::new(),
            append: Default::default(),
            ready_timeout_secs: 60,
        }
    }
}

/// `bench nvme` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeBenchArgs {
    pub target: crate::nvme_load::Target,
    /// The jobs (each with the first connections and depth; a sweep runs
    /// every job at every pair of `connections` × `depth`).
    pub jobs: Vec<String>,
    pub connections: Vec<u32>,
    pub depth: Vec<u32>,
    pub rate: Option<u64>,
    pub runtime_secs: u64,
    pub ramp_secs: u64,
    pub range: Option<u64>,
    pub verify: bool,
    pub json: Option<PathBuf>,
    pub quiet: bool,
}

impl NvmeBenchArgs {
    /// Every job to run, in order: each named job at each connections ×
    /// depth (a `qd1-` job once).
    pub fn job_specs(&self) -> Vec<crate::nvme_load::JobSpec> {
        let mut specs = Vec::new();
        for name in &self.jobs {
            for &c in &self.connections {
                for &d in &self.depth {
                    let mut spec = crate::nvme_load::JobSpec::named(name, c, d)
                        .expect("job names are checked when parsing");
                    if name.starts_with("qd1-")
                        && specs
                            .iter()
                            .any(|s: &crate::nvme_load::JobSpec| s.name == *name)
                    {
                        continue;
                    }
                    spec.rate = self.rate;
                    spec.runtime = std::time::Duration::from_secs(self.runtime_secs);
                    spec.ramp = std::time::Duration::from_secs(self.ramp_secs);
                    spec.range = self.range;
                    spec.verify = self.verify;
                    specs.push(spec);
                }
            }
        }
        specs
    }
}

/// Parses the options of `bench nvme` (after `nvme`).
pub fn parse_bench_nvme(args: &[String]) -> Result<NvmeBenchArgs> {
    use crate::nvme_load::{DEFAULT_PORT, JOB_NAMES, JobSpec, Target};
    let mut options = Options { args: args.iter() };
    let mut address = None;
    let mut subnqn = None;
    let mut target = Target::new("", DEFAULT_PORT, "");
    let mut a = NvmeBenchArgs {
        target: target.clone(),
        jobs: JOB_NAMES.iter().map(|s| s.to_string()).collect(),
        connections: vec![1],
        depth: vec![32],
        rate: None,
        runtime_secs: 10,
        ramp_secs: 1,
        range: None,
        verify: false,
        json: None,
        quiet: false,
    };
    let list = |name: &str, value: &str| -> Result<Vec<u32>> {
        let v: Vec<u32> = value
            .split(',')
            .map(|x| number(name, x.trim(), "a number or a comma-separated list"))
            .collect::<Result<_>>()?;
        if v.iter().any(|&x| x == 0) {
            return Err(Error::Usage(format!("--{name}: must be at least 1")));
        }
        Ok(v)
    };
    while let Some(option) = options.next() {
        let (name, inline) = option?;
        match name.as_str() {
            "verify" => a.verify = true,
            "quiet" => a.quiet = true,
            _ => {
                let value = options.value(&name, inline)?;
                match name.as_str() {
                    "address" => address = Some(value),
                    "port" => target.port = number(&name, &value, "a port number")?,
                    "subnqn" => subnqn = Some(value),
                    "hostnqn" => target.hostnqn = value,
                    "nsid" => target.nsid = number(&name, &value, "a namespace ID")?,
                    "jobs" => {
                        a.jobs = value.split(',').map(|j| j.trim().to_string()).collect();
                        if let Some(bad) = a.jobs.iter().find(|j| JobSpec::named(j, 1, 1).is_none())
                        {
                            return Err(Error::Usage(format!(
                                "--jobs: unknown job `{bad}` (have: {}, qd1-randwrite-4k)",
                                JOB_NAMES.join(", ")
                            )));
                        }
                    }
                    "connections" => a.connections = list(&name, &value)?,
                    "depth" => a.depth = list(&name, &value)?,
                    "rate" => {
                        let rate: u64 = number(&name, &value, "commands a second")?;
                        if rate == 0 {
                            return Err(Error::Usage("--rate: must be at least 1".into()));
                        }
                        a.rate = Some(rate);
                    }
                    "runtime" => {
                        a.runtime_secs = number(&name, &value, "seconds")?;
                        if a.runtime_secs == 0 {
                            return Err(Error::Usage("--runtime: must be at least 1".into()));
                        }
                    }
                    "ramp" => a.ramp_secs = number(&name, &value, "seconds")?,
                    "range" => a.range = Some(parse_size(&value)?),
                    "json" => a.json = Some(PathBuf::from(value)),
                    _ => {
                        return Err(Error::Usage(format!(
                            "bench nvme: unknown option --{name}\n\n{USAGE}"
                        )));
                    }
                }
            }
        }
    }
    target.address = address.ok_or_else(|| {
        Error::Usage("bench nvme: --address is required (the target's address)".into())
    })?;
    target.subnqn = subnqn.ok_or_else(|| {
        Error::Usage(
            "bench nvme: --subnqn is required (the subsystem NQN; `nvme discover` lists it)".into(),
        )
    })?;
    a.target = target;
    Ok(a)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Image,
    Run(RunOptions),
    BenchBoot(BenchOptions),
    BenchNvme(NvmeBenchArgs),
    Help,
    Up(UpArgs),
    Down {
        dir: Option<PathBuf>,
    },
    Status {
        dir: Option<PathBuf>,
    },
    Console {
        dir: Option<PathBuf>,
        node: NodeName,
    },
    Fault {
        dir: Option<PathBuf>,
        fault: Fault,
        node: NodeName,
        nic: Option<usize>,
    },
}

/// Splits arguments into positional words and `--name [value]` options;
/// names in `flags` take no value.
/// Positional words, and `(name, value)` options in order.
type SplitArgs = (Vec<String>, Vec<(String, String)>);

fn split_args(args: &[String], flags: &[&str]) -> Result<SplitArgs> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(name) = arg.strip_prefix("--") else {
            positional.push(arg.clone());
            continue;
        };
        if let Some((n, v)) = name.split_once('=') {
            options.push((n.to_string(), v.to_string()));
        } else if flags.contains(&name) {
            options.push((name.to_string(), String::new()));
        } else {
            let value = iter
                .next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("--{name} needs a value")))?;
            options.push((name.to_string(), value));
        }
    }
    Ok((positional, options))
}

/// Parses commands that take only `--dir` besides positional words.
fn dir_only(command: &str, rest: &[String]) -> Result<(Vec<String>, Option<PathBuf>)> {
    let (positional, options) = split_args(rest, &[])?;
    let mut dir = None;
    for (name, value) in options {
        match name.as_str() {
            "dir" => dir = Some(PathBuf::from(value)),
            _ => {
                return Err(Error::Usage(format!(
                    "{command}: unknown option --{name}\n\n{USAGE}"
                )));
            }
        }
    }
    Ok((positional, dir))
}

fn parse_up(rest: &[String]) -> Result<UpArgs> {
    let (positional, options) = split_args(rest, &["no-ha", "no-host-link"])?;
    if let Some(extra) = positional.first() {
        return Err(Error::Usage(format!("up: unexpected argument `{extra}`")));
    }
    let mut up = UpArgs::default();
    if std::env::var("TANDEM_UP_HA").is_ok_and(|v| v == "0") {
        up.ha_keys = false;
    }
    for (name, value) in options {
        match name.as_str() {
            "dir" => up.dir = Some(PathBuf::from(value)),
            "accel" => up.accel = value.parse()?,
            "disk-size" => up.disk_size = parse_size(&value)?,
            "mem" => {
                up.memory_mib = number(&name, &value, "MiB (a whole number)")?;
                if up.memory_mib == 0 {
                    return Err(Error::Usage("--mem: must be at least 1".into()));
                }
            }
            "front-end-net" => up.front_end = value.parse()?,
            "replication-net" => up.replication = value.parse()?,
            "bridge" => {
                if value.is_empty() || value.len() > 15 || value.contains('/') {
                    return Err(Error::Usage(format!(
                        "--bridge: `{value}` is not an interface name"
                    )));
                }
                up.bridge = Some(value)
            }
            "no-host-link" => up.host_link = false,
            "nqn" => up.nqn = value,
            "no-ha" => up.ha_keys = false,
            "append" => up.append_all = value,
            "append-a" => up.append[0] = value,
            "append-b" => up.append[1] = value,
            "append-witness" => up.append[2] = value,
            "timeout" => {
                up.ready_timeout_secs = number(&name, &value, "seconds")?;
                if up.ready_timeout_secs == 0 {
                    return Err(Error::Usage("--timeout: must be at least 1".into()));
                }
            }
            _ => {
                return Err(Error::Usage(format!(
                    "up: unknown option --{name}\n\n{USAGE}"
                )));
            }
        }
    }
    Ok(up)
}

/// Splits `--key value` and `--key=value` options.
struct Options<'a> {
    args: std::slice::Iter<'a, String>,
}

impl<'a> Options<'a> {
    /// The next option name and its value.
    fn next(&mut self) -> Option<Result<(String, Option<String>)>> {
        let arg = self.args.next()?;
        let Some(name) = arg.strip_prefix("--") else {
            return Some(Err(Error::Usage(format!(
                "unexpected argument `{arg}`\n\n{USAGE}"
            ))));
        };
        Some(Ok(match name.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (name.to_string(), None),
        }))
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .args
                .next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("--{name} needs a value"))),
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Usage(format!("--{name}: expected {what}, got `{text}`")))
}

/// Parses the arguments after `tandem`.
pub fn parse(args: &[String]) -> Result<Command> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let mut options = Options { args: rest.iter() };
    match command.as_str() {
        "image" => {
            if let Some(extra) = rest.first() {
                return Err(Error::Usage(format!(
                    "image takes no arguments, got `{extra}`"
                )));
            }
            Ok(Command::Image)
        }
        "run" => {
            let mut run = RunOptions::default();
            while let Some(option) = options.next() {
                let (name, inline) = option?;
                let value = options.value(&name, inline)?;
                match name.as_str() {
                    "accel" => run.accel = value.parse()?,
                    "disk" => run.disk = Some(PathBuf::from(value)),
                    "disk-size" => run.disk_size = parse_size(&value)?,
                    "mem" => {
                        run.memory_mib = number(&name, &value, "MiB (a whole number)")?;
                        if run.memory_mib == 0 {
                            return Err(Error::Usage("--mem: must be at least 1".into()));
                        }
                    }
                    "port-base" => {
                        run.ports = HostPorts::from_base(number(&name, &value, "a port number")?)?
                    }
                    "append" => run.append = value,
                    _ => {
                        return Err(Error::Usage(format!(
                            "run: unknown option --{name}\n\n{USAGE}"
                        )));
                    }
                }
            }
            Ok(Command::Run(run))
        }
        "bench" => {
            match rest.first().map(String::as_str) {
                Some("boot") => {}
                Some("nvme") => return Ok(Command::BenchNvme(parse_bench_nvme(&rest[1..])?)),
                Some(other) => {
                    return Err(Error::Usage(format!(
                        "bench: unknown benchmark `{other}` (have: boot, nvme)"
                    )));
                }
                None => {
                    return Err(Error::Usage(
                        "bench: which benchmark? (have: boot, nvme)".into(),
                    ));
                }
            }
            let mut options = Options {
                args: rest[1..].iter(),
            };
            let mut bench = BenchOptions::default();
            while let Some(option) = options.next() {
                let (name, inline) = option?;
                match name.as_str() {
                    "no-write" => bench.write = false,
                    "runs" => {
                        let value = options.value(&name, inline)?;
                        bench.runs = number(&name, &value, "a count")?;
                        if bench.runs == 0 {
                            return Err(Error::Usage("--runs: must be at least 1".into()));
                        }
                    }
                    "output" => bench.output = Some(PathBuf::from(options.value(&name, inline)?)),
                    _ => return Err(Error::Usage(format!("bench boot: unknown option --{name}"))),
                }
            }
            Ok(Command::BenchBoot(bench))
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        "up" => Ok(Command::Up(parse_up(rest)?)),
        "down" | "status" => {
            let (positional, dir) = dir_only(command, rest)?;
            if let Some(extra) = positional.first() {
                return Err(Error::Usage(format!(
                    "{command}: unexpected argument `{extra}`"
                )));
            }
            Ok(if command == "down" {
                Command::Down { dir }
            } else {
                Command::Status { dir }
            })
        }
        "console" => {
            let (positional, dir) = dir_only(command, rest)?;
            match positional.as_slice() {
                [node] => Ok(Command::Console {
                    dir,
                    node: node.parse()?,
                }),
                _ => Err(Error::Usage(
                    "usage: cargo tandem console NODE [--dir DIR] (NODE: a, b, witness)".into(),
                )),
            }
        }
        "fault" => {
            let (positional, dir) = dir_only(command, rest)?;
            match positional.as_slice() {
                [fault, node, nic @ ..] if nic.len() <= 1 => {
                    let fault: Fault = fault.parse()?;
                    let node: NodeName = node.parse()?;
                    let nic = match nic.first() {
                        None => None,
                        Some(_) if !matches!(fault, Fault::LinkDown | Fault::LinkUp) => {
                            return Err(Error::Usage(
                                "fault: a NIC goes only with link-down and link-up".into(),
                            ));
                        }
                        Some(text) => Some(crate::layout::parse_nic(node, text)?),
                    };
                    Ok(Command::Fault {
                        dir,
                        fault,
                        node,
                        nic,
                    })
                }
                _ => Err(Error::Usage(
                    "usage: cargo tandem fault kill|pause|resume|link-down|link-up|isolate|rejoin NODE [NIC] [--dir DIR]"
                        .into(),
                )),
            }
        }
        other => Err(Error::Usage(format!(
            "unknown command `{other}`\n\n{USAGE}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn run_defaults() {
        assert_eq!(
            parse(&args("run")).unwrap(),
            Command::Run(RunOptions::default())
        );
        let d = RunOptions::default();
        assert_eq!(d.accel, AccelChoice::Auto);
        assert_eq!(d.memory_mib, 64);
        assert_eq!(d.disk_size, 1 << 30);
        assert_eq!(
            d.ports,
            HostPorts {
                nvme: 4420,
                discovery: 8009,
                status: 8100
            }
        );
    }

    #[test]
    fn run_options_in_both_spellings() {
        let mut a =
            args("run --accel tcg --disk /tmp/d.img --disk-size=2G --mem 32 --port-base=14420");
        a.push("--append".into());
        a.push("net0=10.0.0.1/24,gw=10.0.0.254 log=debug".into());
        let Command::Run(run) = parse(&a).unwrap() else {
            panic!()
        };
        assert_eq!(run.accel, AccelChoice::Tcg);
        assert_eq!(run.disk, Some(PathBuf::from("/tmp/d.img")));
        assert_eq!(run.disk_size, 2 << 30);
        assert_eq!(run.memory_mib, 32);
        assert_eq!(
            run.ports,
            HostPorts {
                nvme: 14420,
                discovery: 14421,
                status: 14422
            }
        );
        assert_eq!(run.append, "net0=10.0.0.1/24,gw=10.0.0.254 log=debug");
    }

    #[test]
    fn bad_run_options_are_usage_errors() {
        for bad in [
            "run --accel hvf",
            "run --mem",
            "run --mem 0",
            "run --mem lots",
            "run --port-base 65534",
            "run --port-base 0",
            "run --disk-size 1Q",
            "run --frobnicate 1",
            "run stray",
            "image extra",
            "launch",
            "bench",
            "bench cpu",
            "bench boot --runs 0",
            "bench nvme",
            "bench nvme --address 10.0.0.1",
            "bench nvme --subnqn nqn.x",
            "bench nvme --address a --subnqn n --jobs randread-4k,bogus",
            "bench nvme --address a --subnqn n --depth 0",
            "bench nvme --address a --subnqn n --depth 1,x",
            "bench nvme --address a --subnqn n --rate 0",
            "bench nvme --address a --subnqn n --runtime 0",
            "bench nvme --address a --subnqn n --frobnicate",
        ] {
            match parse(&args(bad)) {
                Err(Error::Usage(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn bench_nvme_options() {
        let Command::BenchNvme(a) = parse(&args(
            "bench nvme --address 10.0.0.11 --subnqn nqn.x --port 4421 --jobs randread-4k,qd1-randread-4k \
             --connections 1,2 --depth 4,32 --runtime 3 --ramp 0 --verify --range 64M --json /tmp/r.json",
        ))
        .unwrap() else {
            panic!("not bench nvme")
        };
        assert_eq!(a.target.address, "10.0.0.11");
        assert_eq!(a.target.port, 4421);
        assert_eq!(a.target.subnqn, "nqn.x");
        assert_eq!(a.target.nsid, 1);
        assert_eq!(a.range, Some(64 << 20));
        assert!(a.verify && !a.quiet);
        let specs = a.job_specs();
        // randread-4k at 2 × 2 shapes, the QD1 job once.
        let shapes: Vec<(String, u32, u32)> = specs
            .iter()
            .map(|s| (s.name.clone(), s.connections, s.depth))
            .collect();
        assert_eq!(
            shapes,
            [
                ("randread-4k".to_string(), 1, 4),
                ("randread-4k".to_string(), 1, 32),
                ("randread-4k".to_string(), 2, 4),
                ("randread-4k".to_string(), 2, 32),
                ("qd1-randread-4k".to_string(), 1, 1),
            ]
        );
        assert!(
            specs
                .iter()
                .all(|s| s.verify && s.runtime.as_secs() == 3 && s.ramp.is_zero())
        );
        let Command::BenchNvme(d) =
            parse(&args("bench nvme --address h --subnqn n --rate 5000")).unwrap()
        else {
            panic!("not bench nvme")
        };
        assert_eq!(d.target.port, 4420);
        assert_eq!(d.rate, Some(5000));
        assert_eq!(d.job_specs().len(), crate::nvme_load::JOB_NAMES.len());
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse(&args("image")).unwrap(), Command::Image);
        assert_eq!(parse(&[]).unwrap(), Command::Help);
        assert_eq!(parse(&args("help")).unwrap(), Command::Help);
        assert_eq!(parse(&args("up")).unwrap(), Command::Up(UpArgs::default()));
        assert_eq!(
            parse(&args("bench boot --runs 3 --no-write")).unwrap(),
            Command::BenchBoot(BenchOptions {
                runs: 3,
                output: None,
                write: false
            })
        );
        assert_eq!(
            parse(&args("bench boot --output /tmp/b.md")).unwrap(),
            Command::BenchBoot(BenchOptions {
                runs: 10,
                output: Some("/tmp/b.md".into()),
                write: true
            })
        );
    }

    #[test]
    fn up_options() {
        let mut a = args(
            "up --dir /tmp/p --accel tcg --disk-size 256M --mem 32 --front-end-net 10.1.0.0/24 \
             --replication-net=10.2.0.0/24 --bridge br0 --no-host-link --no-ha --nqn nqn.x:y \
             --timeout 90",
        );
        a.extend([
            "--append-b".to_string(),
            "log=debug hb_interval=20".to_string(),
            "--append".to_string(),
            "lease=900 hb_timeout=999".to_string(),
        ]);
        let Command::Up(up) = parse(&a).unwrap() else {
            panic!()
        };
        assert_eq!(up.dir, Some(PathBuf::from("/tmp/p")));
        assert_eq!(up.accel, AccelChoice::Tcg);
        assert_eq!(up.disk_size, 256 << 20);
        assert_eq!(up.memory_mib, 32);
        assert_eq!(up.front_end.to_string(), "10.1.0.0/24");
        assert_eq!(up.replication.to_string(), "10.2.0.0/24");
        assert_eq!(up.bridge.as_deref(), Some("br0"));
        assert!(!up.host_link && !up.ha_keys);
        assert_eq!(up.nqn, "nqn.x:y");
        assert_eq!(
            up.append,
            ["".to_string(), "log=debug hb_interval=20".into(), "".into()]
        );
        assert_eq!(up.append_all, "lease=900 hb_timeout=999");
        assert_eq!(
            up.node_appends(),
            [
                "lease=900 hb_timeout=999".to_string(),
                "lease=900 hb_timeout=999 log=debug hb_interval=20".into(),
                "lease=900 hb_timeout=999".into()
            ]
        );
        assert_eq!(up.ready_timeout_secs, 90);
        let d = UpArgs::default();
        assert!(d.host_link && d.ha_keys && d.bridge.is_none());
    }

    #[test]
    fn setup_commands() {
        assert_eq!(parse(&args("down")).unwrap(), Command::Down { dir: None });
        assert_eq!(
            parse(&args("status --dir /x")).unwrap(),
            Command::Status {
                dir: Some("/x".into())
            }
        );
        assert_eq!(
            parse(&args("console witness --dir=/x")).unwrap(),
            Command::Console {
                dir: Some("/x".into()),
                node: NodeName::Witness
            }
        );
        assert_eq!(
            parse(&args("fault link-down a net1")).unwrap(),
            Command::Fault {
                dir: None,
                fault: Fault::LinkDown,
                node: NodeName::A,
                nic: Some(1)
            }
        );
        assert_eq!(
            parse(&args("fault --dir /x kill b")).unwrap(),
            Command::Fault {
                dir: Some("/x".into()),
                fault: Fault::Kill,
                node: NodeName::B,
                nic: None
            }
        );
    }

    #[test]
    fn bad_setup_commands_are_usage_errors() {
        for bad in [
            "up extra",
            "up --front-end-net 10.0.0.1/24",
            "up --bridge",
            "up --timeout 0",
            "up --frob",
            "down now",
            "status --verbose x",
            "console",
            "console c",
            "console a b",
            "fault",
            "fault kill",
            "fault explode a",
            "fault kill a net0",
            "fault link-down witness net2",
            "fault link-up a net0 extra",
        ] {
            match parse(&args(bad)) {
                Err(Error::Usage(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
