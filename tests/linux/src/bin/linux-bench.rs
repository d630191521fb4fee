//! fio from the stock Linux NVMe/TCP host against a target, under TCG.
//!
//!   linux-bench nvmet [--write-docs] [OPTIONS]
//!       boots Linux's nvmet-tcp (the reference) and the initiator on a fresh
//!       segment, runs the jobs, prints the table; --write-docs replaces the
//!       nvmet-tcp section of docs/benchmarks.md.
//!   linux-bench external --address A --port P --subnqn NQN --netns NS
//!                        [--bridge BR] [--initiator-address CIDR] [OPTIONS]
//!       runs the same jobs against a target already running in network
//!       namespace NS (e.g. a tandem image under `ip netns exec NS`): with
//!       --bridge, the initiator gets a tap `tgbench` on bridge BR there;
//!       without, it joins the multicast segment 230.0.0.1:5000 on NS's
//!       loopback (`-netdev socket,mcast=230.0.0.1:5000,localaddr=127.0.0.1`).
//!       The initiator's address defaults to 10.0.0.20/24.
//!   linux-bench compare [--write-docs] [OPTIONS]
//!       Linux's nvmet-tcp and the tandem image side by side on one segment
//!       (disks of the same size, same vCPUs and RAM); one initiator runs
//!       every job on each in turn; prints the comparison (ratios and issue
//!       3's goals); --write-docs replaces the tandem section of
//!       docs/benchmarks.md.
//! OPTIONS: --runtime SECS (10) --vcpus N (1) --memory MIB (1024)
//!          --disk-mib N (1024, nvmet and compare) --jobs name,name (all)
//!          --segment bridge|mcast (bridge, nvmet and compare)

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tandem_linux_guest::fio::{self, BENCH_JOBS, FioJob, FioResult};
use tandem_linux_guest::image::{guest_dir, repo_root};
use tandem_linux_guest::scenario::{self, Endpoint, GuestShape, Rig, SEGMENT, Segment};
use tandem_linux_guest::{Error, GuestConfig, GuestImage, NetBackend, Netns};

const DOC_HEADING: &str = "## Linux nvmet-tcp reference (fio from the Linux host)";
const COMPARE_HEADING: &str =
    "## tandem against Linux nvmet-tcp (fio from the Linux host, same run)";

struct Options {
    mode: String,
    write_docs: bool,
    runtime: Duration,
    shape: GuestShape,
    disk_mib: u64,
    jobs: Vec<FioJob>,
    address: Option<Ipv4Addr>,
    port: u16,
    subnqn: Option<String>,
    netns: Option<String>,
    bridge: Option<String>,
    initiator_address: String,
    segment: Segment,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mode: args
            .first()
            .cloned()
            .ok_or("usage: linux-bench nvmet|compare|external [OPTIONS]")?,
        write_docs: false,
        runtime: Duration::from_secs(10),
        shape: GuestShape::default(),
        disk_mib: 1024,
        jobs: BENCH_JOBS.to_vec(),
        address: None,
        port: 4420,
        subnqn: None,
        netns: None,
        bridge: None,
        initiator_address: "10.0.0.20/24".into(),
        segment: Segment::Bridge,
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let num = |s: String, name: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {s}"))
        };
        match a.as_str() {
            "--write-docs" => o.write_docs = true,
            "--runtime" => o.runtime = Duration::from_secs(num(value(a)?, a)?),
            "--vcpus" => o.shape.vcpus = num(value(a)?, a)? as u32,
            "--memory" => o.shape.memory_mib = num(value(a)?, a)? as u32,
            "--disk-mib" => o.disk_mib = num(value(a)?, a)?,
            "--port" => o.port = num(value(a)?, a)? as u16,
            "--address" => {
                o.address = Some(
                    value(a)?
                        .parse()
                        .map_err(|_| "--address: not an IPv4 address")?,
                )
            }
            "--subnqn" => o.subnqn = Some(value(a)?),
            "--netns" => o.netns = Some(value(a)?),
            "--bridge" => o.bridge = Some(value(a)?),
            "--initiator-address" => o.initiator_address = value(a)?,
            "--segment" => {
                o.segment = match value(a)?.as_str() {
                    "bridge" => Segment::Bridge,
                    "mcast" => Segment::Mcast,
                    other => return Err(format!("--segment: bridge or mcast, not {other}")),
                }
            }
            "--jobs" => {
                let names = value(a)?;
                o.jobs = names
                    .split(',')
                    .map(|n| {
                        BENCH_JOBS
                            .iter()
                            .find(|j| j.name == n)
                            .copied()
                            .ok_or(format!("unknown job {n}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    match o.mode.as_str() {
        "nvmet" | "compare" => {}
        "external" => {
            if o.address.is_none() || o.subnqn.is_none() || o.netns.is_none() {
                return Err("external needs --address, --subnqn and --netns".into());
            }
        }
        m => return Err(format!("unknown mode {m} (nvmet, compare or external)")),
    }
    Ok(o)
}

fn run_nvmet(o: &Options, image: &GuestImage) -> Result<Vec<FioResult>, Error> {
    let mut rig = Rig::with_segment("bench", o.segment)?;
    let disk = guest_dir().join("runs/bench-disk.raw");
    scenario::create_disk(&disk, o.disk_mib << 20)?;
    let mut target = rig.start_nvmet(image, &disk, o.port, o.shape, Duration::from_secs(1800))?;
    // Start the initiator once the target listens, so its boot does not
    // compete for the CPUs with nothing to measure yet.
    target.wait_ready(Duration::from_secs(180))?;
    let config = rig.bench_initiator(&target.endpoint, &o.jobs, o.runtime, o.shape)?;
    let outcome = tandem_linux_guest::run(image, &config);
    let target_outcome = target.stop();
    let _ = std::fs::remove_file(&disk);
    let outcome = outcome?;
    outcome.check()?;
    target_outcome?.check()?;
    eprint!("{}", outcome.output);
    scenario::collect_fio(&outcome, &o.jobs)
}

/// Boots nvmet-tcp and tandem side by side (each on a disk file of its own,
/// same size, same shape), then one initiator connected to both runs every
/// job on each in turn; returns (nvmet, tandem).
/// Frames one target's NIC moved during the run (a bridge segment only).
#[derive(Clone, Copy, Debug, Default)]
struct Frames {
    sent: u64,
    received: u64,
}

struct Compared {
    nvmet: Vec<FioResult>,
    tandem: Vec<FioResult>,
    /// nvmet's and tandem's frames, if counted.
    frames: Option<(Frames, Frames)>,
    /// nvmet's and tandem's host CPU, if measured.
    cpu: Option<(TargetCpu, TargetCpu)>,
}

/// Host CPU time of one target's VM (its QEMU, every thread).
#[derive(Clone, Copy, Debug, Default)]
struct TargetCpu {
    /// Over the whole run of the jobs.
    run: Duration,
    /// Share of one core while both targets idle, before the jobs.
    idle_share: f64,
}

/// CPU time (user + system) of the processes in process group `group`,
/// from `/proc/<pid>/stat`; `None` if `/proc` cannot be read.
fn group_cpu(group: i32) -> Option<Duration> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which may hold spaces: state,
        // ppid, pgrp, …, utime (14th field of the line), stime (15th).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 12 && fields[2].parse::<i32>().ok() == Some(group) {
            ticks +=
                fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        }
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second))
}

/// How long both targets are watched idle before the jobs.
const IDLE_SAMPLE: Duration = Duration::from_secs(5);

fn run_compare(o: &Options, image: &GuestImage) -> Result<Compared, Error> {
    let mut rig = Rig::with_segment("cmp", o.segment)?;
    let nvmet_disk = guest_dir().join("runs/cmp-nvmet-disk.raw");
    let tandem_disk = guest_dir().join("runs/cmp-tandem-disk.raw");
    scenario::create_disk(&nvmet_disk, o.disk_mib << 20)?;
    scenario::create_disk(&tandem_disk, o.disk_mib << 20)?;
    let mut nvmet = rig.start_nvmet(
        image,
        &nvmet_disk,
        o.port,
        o.shape,
        Duration::from_secs(3600),
    )?;
    let mut tandem = rig.start_tandem(&tandem_disk, o.shape, "")?;
    let measured = (|| {
        nvmet.wait_ready(Duration::from_secs(180))?;
        tandem.wait_ready(Duration::from_secs(60))?;
        let targets = [("nvmet", &nvmet.endpoint), ("tandem", &tandem.endpoint)];
        let config = scenario::compare_initiator(&mut rig, &targets, &o.jobs, o.runtime, o.shape)?;
        // nvmet's tap is tg0, tandem's tg1 (started in that order).
        let counted = |rig: &Rig| -> Option<[(u64, u64); 2]> {
            (o.segment == Segment::Bridge)
                .then(|| Some([rig.tap_frames(0).ok()?, rig.tap_frames(1).ok()?]))?
        };
        let groups = [nvmet.guest.process_group(), tandem.node.pid() as i32];
        let cpu_now =
            || -> Option<[Duration; 2]> { Some([group_cpu(groups[0])?, group_cpu(groups[1])?]) };
        let idle_before = cpu_now();
        std::thread::sleep(IDLE_SAMPLE);
        let cpu_before = cpu_now();
        let before = counted(&rig);
        let outcome = tandem_linux_guest::run(image, &config)?;
        let after = counted(&rig);
        let cpu_after = cpu_now();
        let cpu = match (idle_before, cpu_before, cpu_after) {
            (Some(i), Some(b), Some(a)) => {
                let one = |k: usize| TargetCpu {
                    run: a[k].saturating_sub(b[k]),
                    idle_share: b[k].saturating_sub(i[k]).as_secs_f64() / IDLE_SAMPLE.as_secs_f64(),
                };
                Some((one(0), one(1)))
            }
            _ => None,
        };
        let frames = before.zip(after).map(|(b, a)| {
            let f = |i: usize| Frames {
                sent: a[i].0 - b[i].0,
                received: a[i].1 - b[i].1,
            };
            (f(0), f(1))
        });
        if let Err(e) = outcome.check() {
            return Err(Error::Tandem(format!(
                "{e}\ntandem console:\n{}",
                tandem.console_tail(40)
            )));
        }
        eprint!("{}", outcome.output);
        eprintln!("{}", tandem.command("nvme").unwrap_or_default().join("\n"));
        Ok(Compared {
            nvmet: scenario::collect_fio_of(&outcome, "nvmet", &o.jobs)?,
            tandem: scenario::collect_fio_of(&outcome, "tandem", &o.jobs)?,
            frames,
            cpu,
        })
    })();
    let nvmet_stopped = nvmet.stop();
    let tandem_stopped = tandem.stop(Duration::from_secs(30));
    let _ = std::fs::remove_file(&nvmet_disk);
    let _ = std::fs::remove_file(&tandem_disk);
    let results = measured?;
    nvmet_stopped?.check()?;
    tandem_stopped?;
    Ok(results)
}

fn run_external(o: &Options, image: &GuestImage) -> Result<Vec<FioResult>, Error> {
    let endpoint = Endpoint {
        address: o.address.expect("checked"),
        port: o.port,
        subnqn: o.subnqn.clone().expect("checked"),
    };
    let netns = Netns::existing(o.netns.as_deref().expect("checked"))?;
    // On a bridge: a tap of our own, removed afterwards.
    let tap = "tgbench";
    let backend = match &o.bridge {
        Some(bridge) => {
            netns.add_tap(tap, Some(bridge))?;
            NetBackend::Tap {
                ifname: tap.to_string(),
            }
        }
        None => SEGMENT,
    };
    let config = GuestConfig::new("bench-external", scenario::FIO_BENCH_SCRIPT)
        .vcpus(o.shape.vcpus)
        .memory_mib(o.shape.memory_mib)
        .nic(backend, &o.initiator_address)
        .in_netns(&netns)
        .env("TARGET_ADDR", endpoint.address)
        .env("TARGET_PORT", endpoint.port)
        .env("SUBNQN", &endpoint.subnqn)
        .env("FIO_JOBS", fio::jobs_env(&o.jobs))
        .env("FIO_RUNTIME", o.runtime.as_secs())
        .timeout(Duration::from_secs(
            90 + 4 * (o.runtime.as_secs() + 2) * o.jobs.len() as u64,
        ));
    let outcome = tandem_linux_guest::run(image, &config);
    if o.bridge.is_some() {
        let _ = netns.ip(&["link", "del", tap]);
    }
    let outcome = outcome?;
    outcome.check()?;
    eprint!("{}", outcome.output);
    scenario::collect_fio(&outcome, &o.jobs)
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB")
}

fn render_section(
    o: &Options,
    image: &GuestImage,
    results: &[FioResult],
    wall: Duration,
) -> String {
    let mut s = String::new();
    if o.mode == "external" {
        let _ = writeln!(
            s,
            "## fio from the Linux host against {}:{} ({})\n",
            o.address.map(|a| a.to_string()).unwrap_or_default(),
            o.port,
            o.subnqn.as_deref().unwrap_or("")
        );
        let _ = writeln!(
            s,
            "- date: {}",
            command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        );
        let _ = writeln!(s, "- machine: {}, accelerator TCG", machine());
        let _ = writeln!(
            s,
            "- initiator: {} vCPU, {} MiB, Debian kernel {}; fio 3.33, io_uring, direct=1, {} s per job after 2 s ramp; whole run {:.0} s wall\n",
            o.shape.vcpus,
            o.shape.memory_mib,
            image.kernel_version,
            o.runtime.as_secs(),
            wall.as_secs_f64()
        );
        s.push_str(&fio::render_table(results));
        return s;
    }
    let _ = writeln!(s, "{DOC_HEADING}\n");
    let network = match o.segment {
        Segment::Bridge => {
            "a tap per guest on a Linux bridge inside a private network namespace (QEMU `-netdev tap`, \
             userspace virtio-net with offloads: the Linux guests use TSO)"
        }
        Segment::Mcast => {
            "QEMU `-netdev socket` multicast on the loopback of a private network namespace \
             (no offloads: MTU-sized frames)"
        }
    };
    let _ = writeln!(
        s,
        "Written by `tests/linux/bench.sh nvmet --write-docs` (`linux-bench`). Linux's own target \
         (nvmet-tcp, configfs, namespace 1 on a virtio-blk raw file) in one guest, the stock Linux \
         host (nvme-tcp, fio) in another, on one virtual Ethernet segment: {network}. These are the \
         figures tandem is compared with. The machine is shared and TCG-bound (guest clocks run slow \
         when both cores are busy): compare only figures from one run on one machine.\n"
    );
    let qemu = command_line("qemu-system-x86_64", &["--version"]);
    let _ = writeln!(
        s,
        "- date: {}",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(
        s,
        "- accelerator: **TCG** (`-accel tcg,thread=multi -cpu max`), {}",
        qemu.lines().next().unwrap_or("QEMU")
    );
    let _ = writeln!(
        s,
        "- each guest: {} vCPU, {} MiB, Debian kernel {}; target disk {} MiB raw, cache=writeback",
        o.shape.vcpus, o.shape.memory_mib, image.kernel_version, o.disk_mib
    );
    let _ = writeln!(
        s,
        "- fio 3.33, io_uring, direct=1, time_based, {} s per job after 2 s ramp, jobs in the order listed; whole run {:.0} s wall\n",
        o.runtime.as_secs(),
        wall.as_secs_f64()
    );
    s.push_str(&fio::render_table(results));
    s
}

/// The host's 1-minute load average (other work on a shared machine).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn render_compare_section(
    o: &Options,
    image: &GuestImage,
    compared: &Compared,
    wall: Duration,
    load_at_start: &str,
) -> String {
    let (nvmet, tandem) = (&compared.nvmet, &compared.tandem);
    let mut s = String::new();
    let _ = writeln!(s, "{COMPARE_HEADING}\n");
    let _ = writeln!(
        s,
        "Written by `tests/linux/bench.sh compare --write-docs` (`linux-bench compare`). On one \
         virtual Ethernet segment (a tap per VM on a Linux bridge in a private network namespace), \
         Linux's own target (nvmet-tcp, configfs, namespace 1 on /dev/vda, at 10.0.0.10) and the \
         tandem image (namespace 1 on its virtio-blk disk, at 10.0.0.11) run side by side, each on \
         an empty raw disk file of the same size, with the same vCPUs and RAM. One stock Linux host \
         (nvme-tcp, fio) connects to both and runs every job on one target and then on the other, \
         the order alternating from job to job, so that the shared machine's load drifts alike for \
         both (the idle target meanwhile only answers keep-alives). Everything is TCG-bound: only \
         the ratios within one run mean anything, and with other work on the machine (see the \
         load average) even they vary from run to run by up to 2×: compare runs made at low load. Goals (issue 3): tandem ≥ 1.5× nvmet-tcp IOPS at \
         4 KiB, ≥ 1.0× at 128 KiB, QD1 latency ≤ 0.8×.\n"
    );
    let qemu = command_line("qemu-system-x86_64", &["--version"]);
    let _ = writeln!(
        s,
        "- date: {}",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        s,
        "- machine: {}; host load average (1 min) {load_at_start} at the start, {} at the end",
        machine(),
        load_average()
    );
    let _ = writeln!(
        s,
        "- accelerator: **TCG** for every VM (the Linux guests `-accel tcg,thread=multi -cpu max`, \
         tandem `-accel tcg -cpu max`), {}",
        qemu.lines().next().unwrap_or("QEMU")
    );
    let _ = writeln!(
        s,
        "- each target: {} vCPU, {} MiB, {} MiB raw disk file (virtio-blk, cache=writeback); nvmet-tcp \
         on Debian kernel {}; tandem built from this tree (`tandem_qemu::build_image`), default \
         command line plus `net0=`, `nqn=`, `serial=`",
        o.shape.vcpus, o.shape.memory_mib, o.disk_mib, image.kernel_version
    );
    let _ = writeln!(
        s,
        "- initiator: {} vCPU, {} MiB, same kernel; `nvme connect` defaults (no digests, 1 I/O queue \
         per vCPU); fio 3.33, io_uring, direct=1, time_based, {} s per job and target after 2 s \
         ramp, jobs in the order listed (writes first, so reads hit written blocks); whole run \
         {:.0} s wall\n",
        o.shape.vcpus,
        o.shape.memory_mib,
        o.runtime.as_secs(),
        wall.as_secs_f64()
    );
    s.push_str(&fio::render_comparison(nvmet, tandem, &o.jobs));
    if let Some(frames) = compared.frames {
        s.push('\n');
        s.push_str(&render_frames(nvmet, tandem, frames));
    }
    if let Some(cpu) = compared.cpu {
        s.push('\n');
        s.push_str(&render_cpu(nvmet, tandem, cpu));
    }
    s.push_str("\nnvmet-tcp, all figures:\n\n");
    s.push_str(&fio::render_table(nvmet));
    s.push_str("\ntandem, all figures:\n\n");
    s.push_str(&fio::render_table(tandem));
    s
}

/// Frames per I/O, each target's whole run: under emulation every frame
/// costs the initiator (its interrupts, its TCP) and both QEMUs far more
/// than its bytes, and unlike IOPS the count hardly moves with the machine's
/// load.
fn render_frames(nvmet: &[FioResult], tandem: &[FioResult], (n, t): (Frames, Frames)) -> String {
    let ios = |r: &[FioResult]| r.iter().map(|r| r.ios).sum::<u64>().max(1) as f64;
    let (ni, ti) = (ios(nvmet), ios(tandem));
    format!(
        "Frames on each target's tap per I/O, over its whole run (every job; ramp-up, connection \
         and keep-alives included; I/Os after ramp-up), sent by the target / sent to it: nvmet-tcp \
         {:.2} / {:.2}, tandem {:.2} / {:.2} ({} and {} I/Os).\n",
        n.sent as f64 / ni,
        n.received as f64 / ni,
        t.sent as f64 / ti,
        t.received as f64 / ti,
        ni as u64,
        ti as u64,
    )
}

/// Host CPU per I/O of each target's VM: the initiator, not the targets,
/// bounds the IOPS here, so what each target costs the machine per I/O is
/// the figure that tells them apart. The whole run counts (the other
/// target's jobs too), so each target's idle share is shown beside it.
fn render_cpu(nvmet: &[FioResult], tandem: &[FioResult], (n, t): (TargetCpu, TargetCpu)) -> String {
    let ios = |r: &[FioResult]| r.iter().map(|r| r.ios).sum::<u64>().max(1) as f64;
    let per_io = |c: TargetCpu, r: &[FioResult]| c.run.as_secs_f64() * 1e6 / ios(r);
    let (np, tp) = (per_io(n, nvmet), per_io(t, tandem));
    format!(
        "Host CPU of each target's VM (its QEMU process, every thread) over the whole run, per \
         I/O of that target: nvmet-tcp {np:.0} µs, tandem {tp:.0} µs ({:.2}×); {:.1} s and {:.1} s \
         in all. Idle, before the jobs, each used {:.1} % and {:.1} % of a core.\n",
        tp / np.max(1e-9),
        n.run.as_secs_f64(),
        t.run.as_secs_f64(),
        n.idle_share * 100.0,
        t.idle_share * 100.0,
    )
}

/// Replaces the section starting at `heading` (up to the next `## `), or appends it.
fn replace_section(document: &str, heading: &str, section: &str) -> String {
    let lines: Vec<&str> = document.lines().collect();
    let section = section.trim_end_matches('\n');
    let Some(start) = lines.iter().position(|l| l.trim_end() == heading) else {
        let mut out = document.trim_end_matches('\n').to_string();
        if out.is_empty() {
            out.push_str("# Benchmarks");
        }
        return format!("{out}\n\n{section}\n");
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out = lines[..start].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(section);
    out.push('\n');
    if end < lines.len() {
        out.push('\n');
        out.push_str(&lines[end..].join("\n"));
        out.push('\n');
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("linux-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    if o.mode == "compare" {
        return main_compare(&o, started);
    }
    let result = GuestImage::ensure().and_then(|image| {
        let results = if o.mode == "nvmet" {
            run_nvmet(&o, &image)?
        } else {
            run_external(&o, &image)?
        };
        Ok((image, results))
    });
    let (image, results) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("linux-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let section = render_section(&o, &image, &results, started.elapsed());
    println!("{section}");
    if o.write_docs && o.mode == "nvmet" {
        let path = repo_root().join("docs/benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, replace_section(&doc, DOC_HEADING, &section)) {
            eprintln!("linux-bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("linux-bench: updated {}", path.display());
    }
    ExitCode::SUCCESS
}

fn main_compare(o: &Options, started: Instant) -> ExitCode {
    let load_at_start = load_average();
    let result = GuestImage::ensure().and_then(|image| {
        // Build the image before anything boots, so that the build does not
        // compete with a measurement.
        tandem_linux_guest::tandem::tandem_image()?;
        let compared = run_compare(o, &image)?;
        Ok((image, compared))
    });
    let (image, compared) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("linux-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let section = render_compare_section(o, &image, &compared, started.elapsed(), &load_at_start);
    println!("{section}");
    if o.write_docs {
        let path = repo_root().join("docs/benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, replace_section(&doc, COMPARE_HEADING, &section)) {
            eprintln!("linux-bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("linux-bench: updated {}", path.display());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_replaced_in_place_or_appended() {
        let doc = "# Benchmarks\n\n## Boot\n\nboot text\n\n## Linux nvmet-tcp reference (fio from the Linux host)\n\nold\n\n## Later\n\nx\n";
        let out = replace_section(doc, DOC_HEADING, &format!("{DOC_HEADING}\n\nnew\n"));
        assert!(out.contains("boot text") && out.contains("\nnew\n") && !out.contains("old"));
        assert!(out.contains("## Later\n\nx"));
        let appended = replace_section(
            "# Benchmarks\n\n## Boot\n",
            DOC_HEADING,
            "## Linux nvmet-tcp reference (fio from the Linux host)\n\nn",
        );
        assert!(appended.starts_with("# Benchmarks\n\n## Boot\n\n## Linux nvmet-tcp"));
    }

    #[test]
    fn arguments() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&a(
            "nvmet --runtime 5 --jobs randread-4k-qd1,read-128k-qd32 --write-docs",
        ))
        .unwrap();
        assert_eq!(o.runtime, Duration::from_secs(5));
        assert_eq!(o.jobs.len(), 2);
        assert!(o.write_docs);
        assert!(parse_args(&a("external --address 10.0.0.2")).is_err());
        assert!(parse_args(&a("nvmet --jobs nope")).is_err());
        assert!(parse_args(&a("external --address 10.0.0.2 --subnqn n --netns x")).is_ok());
        assert_eq!(
            parse_args(&a("compare --write-docs")).unwrap().mode,
            "compare"
        );
    }
}
