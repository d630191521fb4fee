//! The native load generator (`cargo tandem bench nvme`) against tandem and
//! Linux's nvmet-tcp side by side, and against the HA pair:
//!
//!   nvme-bench compare [--write-docs] [OPTIONS]
//!       tandem (1 vCPU) and nvmet-tcp (1 vCPU, same RAM, same raw-disk
//!       backing, same virtio devices), each in a TCG guest on a tap of a
//!       bridge in a private network namespace; the generator runs on this
//!       machine inside that namespace; jobs alternate between the targets.
//!       Then a sweep of connections × depth, nvmet-tcp again with 2 vCPUs,
//!       and the HA pair (`cargo tandem up`'s layout) replicated against
//!       unreplicated. Prints the report; --write-docs replaces its section
//!       of docs/benchmarks.md and writes the charts next to it.
//!   nvme-bench generate ARGS
//!       the generator itself, as `cargo tandem bench nvme ARGS` (what
//!       `compare` runs inside the namespace, one job per process).
//! OPTIONS: --runtime SECS (10) per job, --sweep-runtime SECS (4) per sweep
//!          point, --depths LIST (1,4,16,32,64), --connections N (2) for the
//!          saturation jobs, --depth N (32), --memory MIB (1024), --disk-mib
//!          N (1024), --skip single,sweep,scaling,pair (parts to leave out)

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tandem_linux_guest::image::repo_root;
use tandem_linux_guest::native::{self, Measured, Series, Subject};
use tandem_linux_guest::scenario::{self, GuestShape, Rig, Segment};
use tandem_linux_guest::tandem::{TANDEM_NQN, tandem_image};
use tandem_linux_guest::{Error, GuestImage};
use tandem_qemu::bench::replace_section;
use tandem_qemu::nvme_load::JobResult;
use tandem_qemu::{Accel, ConsoleClient, NodeName, pair};

const HEADING: &str =
    "## tandem against Linux nvmet-tcp, native load (`cargo tandem bench nvme`, same run)";
const IOPS_CHART: &str = "bench-iops-vs-depth.png";
const CDF_CHART: &str = "bench-latency-cdf.png";
/// The generator's address on the rig's bridge.
const GENERATOR_ADDRESS: &str = "10.0.0.1/24";
/// The pair's writes go to the first 32 MiB (8 activity extents of 4 MiB,
/// as the Linux host's HA benchmark): random writes over the whole disk
/// would measure mostly the metadata write each newly touched extent costs.
const PAIR_RANGE: &str = "32M";

type Result<T> = std::result::Result<T, Error>;

struct Options {
    write_docs: bool,
    runtime: u64,
    sweep_runtime: u64,
    depths: Vec<u32>,
    connections: u32,
    depth: u32,
    shape: GuestShape,
    disk_mib: u64,
    skip: Vec<String>,
}

fn parse_args(args: &[String]) -> std::result::Result<Options, String> {
    let mut o = Options {
        write_docs: false,
        runtime: 10,
        sweep_runtime: 4,
        depths: vec![1, 4, 16, 32, 64],
        connections: 2,
        depth: 32,
        shape: GuestShape::default(),
        disk_mib: 1024,
        skip: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let num = |s: String| {
            s.parse::<u64>()
                .map_err(|_| format!("{a}: not a number: {s}"))
        };
        match a.as_str() {
            "--write-docs" => o.write_docs = true,
            "--runtime" => o.runtime = num(value()?)?,
            "--sweep-runtime" => o.sweep_runtime = num(value()?)?,
            "--connections" => o.connections = num(value()?)? as u32,
            "--depth" => o.depth = num(value()?)? as u32,
            "--memory" => o.shape.memory_mib = num(value()?)? as u32,
            "--disk-mib" => o.disk_mib = num(value()?)?,
            "--depths" => {
                o.depths = value()?
                    .split(',')
                    .map(|d| {
                        d.parse()
                            .map_err(|_| format!("--depths: not a number: {d}"))
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            "--skip" => o.skip = value()?.split(',').map(String::from).collect(),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// The main jobs, in order (writes first, so that reads find written blocks).
const JOBS: [&str; 6] = [
    "randwrite-4k",
    "randread-4k",
    "randrw-4k",
    "write-128k",
    "read-128k",
    "qd1-randread-4k",
];

fn job_args(job: &str, connections: u32, depth: u32, runtime: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--jobs",
        job,
        "--connections",
        &connections.to_string(),
        "--depth",
        &depth.to_string(),
        "--runtime",
        &runtime.to_string(),
        "--ramp",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Everything one run measured.
#[derive(Default)]
struct Report {
    idle_share: Vec<(String, f64)>,
    /// The main jobs, both targets, in the order run.
    jobs: Vec<Measured>,
    /// Random read latency under the same fixed load on both.
    open_loop: Vec<Measured>,
    /// (target, connections, depth) → randread-4k.
    sweep: Vec<Measured>,
    /// nvmet-tcp with 2 vCPUs.
    scaling: Vec<Measured>,
    pair: Option<PairReport>,
    /// Jobs that failed (the target stalled or refused), as reported.
    failures: Vec<String>,
    wall: Duration,
    load_start: String,
    load_end: String,
    kernel: String,
}

struct PairReport {
    replicated: Vec<Measured>,
    alone: Vec<Measured>,
    /// Ping round trips (ms, median) from the generator's namespace to a and b.
    ping_ms: (f64, f64),
    /// The primary's and secondary's own averages over the replicated QD1
    /// job: local write, peer acknowledgement, secondary's apply (µs).
    node_times: Option<(f64, f64, f64)>,
    primary: NodeName,
}

fn find<'a>(rows: &'a [Measured], target: &str, job: &str) -> Option<&'a Measured> {
    rows.iter()
        .find(|m| m.target == target && m.result.spec_name == job)
}

fn run_compare(o: &Options, image: &GuestImage, report: &mut Report, work: &Path) -> Result<()> {
    let mut rig = Rig::with_segment("nb", Segment::Bridge)?;
    rig.netns
        .ip(&["addr", "add", GENERATOR_ADDRESS, "dev", "br0"])?;
    let nvmet_disk = work.join("nvmet-disk.raw");
    let tandem_disk = work.join("tandem-disk.raw");
    scenario::create_disk(&nvmet_disk, o.disk_mib << 20)?;
    scenario::create_disk(&tandem_disk, o.disk_mib << 20)?;
    let netns = rig.netns.name().to_string();
    let skip = |part: &str| o.skip.iter().any(|s| s == part);
    if !skip("single") {
        side_by_side(o, image, &mut rig, report, work, &nvmet_disk, &tandem_disk)?;
    }
    if !skip("scaling") {
        // nvmet-tcp again, with 2 vCPUs, alone on the machine; its tap is
        // the rig's next (taps are numbered in the order guests start).
        let tap = format!("tg{}", if skip("single") { 0 } else { 2 });
        scaling(o, image, &mut rig, report, work, &nvmet_disk, &netns, &tap)?;
    }
    let _ = std::fs::remove_file(&nvmet_disk);
    let _ = std::fs::remove_file(&tandem_disk);
    Ok(())
}

/// A job's result, or `None` with its failure recorded for the report
/// (one target stalling must not cost the rest of the run).
fn kept(report: &mut Report, target: &str, job: &str, m: Result<Measured>) -> Option<Measured> {
    match m {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("nvme-bench: {job} on {target} failed: {e}");
            report.failures.push(format!("{job} on {target}: {e}"));
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn side_by_side(
    o: &Options,
    image: &GuestImage,
    rig: &mut Rig,
    report: &mut Report,
    work: &Path,
    nvmet_disk: &Path,
    tandem_disk: &Path,
) -> Result<()> {
    // nvmet's tap is tg0, tandem's tg1.
    let mut nvmet = rig.start_nvmet(image, nvmet_disk, 4420, o.shape, Duration::from_secs(3600))?;
    let mut tandem = rig.start_tandem(tandem_disk, o.shape, "")?;
    let netns = rig.netns.name().to_string();
    let result = (|| -> Result<()> {
        nvmet.wait_ready(Duration::from_secs(300))?;
        tandem.wait_ready(Duration::from_secs(60))?;
        let subjects = [
            Subject {
                name: "nvmet-tcp".into(),
                address: nvmet.endpoint.address.to_string(),
                port: nvmet.endpoint.port,
                subnqn: nvmet.endpoint.subnqn.clone(),
                cpu_group: nvmet.guest.process_group(),
                cpu_single: false,
                tap: Some("tg0".into()),
            },
            Subject {
                name: "tandem".into(),
                address: tandem.endpoint.address.to_string(),
                port: tandem.endpoint.port,
                subnqn: TANDEM_NQN.into(),
                cpu_group: tandem.node.pid() as i32,
                cpu_single: true,
                tap: Some("tg1".into()),
            },
        ];
        // Both listen (a QD1 second each), then both idle for a while.
        for s in &subjects {
            native::run_job(
                &netns,
                s,
                &job_args("qd1-randread-4k", 1, 1, 1, &["--quiet"]),
                work,
            )?;
        }
        let before: Vec<_> = subjects
            .iter()
            .map(|s| native::cpu_of(s.cpu_group, s.cpu_single))
            .collect();
        std::thread::sleep(Duration::from_secs(5));
        for (s, b) in subjects.iter().zip(before) {
            if let (Some(b), Some(a)) = (b, native::cpu_of(s.cpu_group, s.cpu_single)) {
                report
                    .idle_share
                    .push((s.name.clone(), (a - b).as_secs_f64() / 5.0));
            }
        }
        for (i, job) in JOBS.iter().enumerate() {
            let order: Vec<&Subject> = if i % 2 == 0 {
                subjects.iter().collect()
            } else {
                subjects.iter().rev().collect()
            };
            for s in order {
                eprintln!("nvme-bench: {job} on {}", s.name);
                let m = native::run_job(
                    &netns,
                    s,
                    &job_args(job, o.connections, o.depth, o.runtime, &[]),
                    work,
                );
                if let Some(m) = kept(report, &s.name, job, m) {
                    report.jobs.push(m);
                }
            }
        }
        // The same fixed load on both: half what the slower one did at
        // saturation.
        let saturated = subjects
            .iter()
            .filter_map(|s| find(&report.jobs, &s.name, "randread-4k"))
            .map(|m| m.result.iops())
            .fold(f64::MAX, f64::min);
        let rate = ((saturated / 2.0) as u64).max(100).to_string();
        for s in subjects.iter().rev() {
            eprintln!("nvme-bench: open loop {rate}/s on {}", s.name);
            let args = job_args(
                "randread-4k",
                o.connections,
                o.depth,
                o.runtime,
                &["--rate", &rate],
            );
            let m = native::run_job(&netns, s, &args, work);
            if let Some(m) = kept(report, &s.name, "randread-4k open loop", m) {
                report.open_loop.push(m);
            }
        }
        if !o.skip.iter().any(|s| s == "sweep") {
            for connections in [1, 2] {
                for (i, &depth) in o.depths.iter().enumerate() {
                    let order: Vec<&Subject> = if i % 2 == 0 {
                        subjects.iter().collect()
                    } else {
                        subjects.iter().rev().collect()
                    };
                    for s in order {
                        eprintln!("nvme-bench: sweep {connections} × QD{depth} on {}", s.name);
                        let args = job_args(
                            "randread-4k",
                            connections,
                            depth,
                            o.sweep_runtime,
                            &["--quiet"],
                        );
                        let m = native::run_job(&netns, s, &args, work);
                        let what = format!("randread-4k {connections} × QD{depth}");
                        if let Some(m) = kept(report, &s.name, &what, m) {
                            report.sweep.push(m);
                        }
                    }
                }
            }
        }
        Ok(())
    })();
    let nvmet_stopped = nvmet.stop();
    let tandem_stopped = tandem.stop(Duration::from_secs(30));
    result?;
    nvmet_stopped?.check()?;
    tandem_stopped?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn scaling(
    o: &Options,
    image: &GuestImage,
    rig: &mut Rig,
    report: &mut Report,
    work: &Path,
    nvmet_disk: &Path,
    netns: &str,
    tap: &str,
) -> Result<()> {
    {
        let shape = GuestShape {
            vcpus: 2,
            ..o.shape
        };
        let mut nvmet2 =
            rig.start_nvmet(image, nvmet_disk, 4420, shape, Duration::from_secs(3600))?;
        let result = (|| -> Result<()> {
            nvmet2.wait_ready(Duration::from_secs(300))?;
            let s = Subject {
                name: "nvmet-tcp 2 vCPUs".into(),
                address: nvmet2.endpoint.address.to_string(),
                port: nvmet2.endpoint.port,
                subnqn: nvmet2.endpoint.subnqn.clone(),
                cpu_group: nvmet2.guest.process_group(),
                cpu_single: false,
                tap: Some(tap.into()),
            };
            native::run_job(
                netns,
                &s,
                &job_args("qd1-randread-4k", 1, 1, 1, &["--quiet"]),
                work,
            )?;
            for job in ["randwrite-4k", "randread-4k"] {
                for connections in [1, 2] {
                    eprintln!(
                        "nvme-bench: {job} {connections} × QD{} on {}",
                        o.depth, s.name
                    );
                    let args = job_args(job, connections, o.depth, o.runtime, &[]);
                    let m = native::run_job(netns, &s, &args, work);
                    if let Some(m) = kept(report, &s.name, job, m) {
                        report.scaling.push(m);
                    }
                }
            }
            Ok(())
        })();
        let stopped = nvmet2.stop();
        result?;
        stopped?.check()?;
    }
    Ok(())
}

/// The averages of a `write-time`/`apply-time` stat: (sum µs, count).
fn stat_sum(line: &str, key: &str) -> Option<(f64, f64)> {
    let rest = &line[line.find(&format!("{key}avg:"))? + key.len() + 4..];
    let avg: f64 = rest.split("us").next()?.parse().ok()?;
    let n: f64 = rest
        .split("n:")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((avg * n, n))
}

/// Average over a window from two snapshots of a cumulative stat.
fn window_avg(before: &str, after: &str, line_start: &str, key: &str) -> Option<f64> {
    let pick = |status: &str| {
        status
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(line_start))
            .and_then(|l| stat_sum(l, key))
    };
    let (b, a) = (pick(before).unwrap_or((0.0, 0.0)), pick(after)?);
    let n = a.1 - b.1;
    (n > 0.0).then(|| (a.0 - b.0) / n)
}

/// The median round trip (ms) of 200 pings from inside `netns`.
fn ping_median_ms(netns: &str, address: &str) -> f64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", netns, "ping", "-n", "-c", "200", "-i", "0.005", address,
        ])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    median_rtt_ms(&text)
}

/// The median of the `time=X ms` of ping's replies (NaN if none).
fn median_rtt_ms(ping_output: &str) -> f64 {
    let mut times: Vec<f64> = ping_output
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The HA pair (a, b, the witness; `cargo tandem up`'s layout, without a
/// link to this machine): replicated writes, then the same after the
/// secondary was killed.
fn run_pair(o: &Options, work: &Path) -> Result<PairReport> {
    let image = tandem_image()?;
    let dir = work.join("pair");
    let mut options = pair::UpOptions::new(&dir, Accel::Tcg);
    options.uplinks.host_link = false;
    options.disk_size = o.disk_mib << 20;
    options.ready_timeout = Duration::from_secs(120);
    let up = pair::up(&image, &options)?;
    let result = (|| -> Result<PairReport> {
        let layout = &up.layout;
        let netns = up.setup.names.netns.clone();
        let generator = layout.front_end.cidr(layout.front_end.host(250));
        tandem_qemu::pairnet::ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &generator,
            "dev",
            tandem_qemu::layout::FRONT_END_BRIDGE,
        ])?;
        let console = |node: NodeName| -> Result<ConsoleClient> {
            Ok(ConsoleClient::connect(
                &up.setup.files(node).console_socket(),
                Duration::from_secs(30),
            )?)
        };
        let mut consoles = [console(NodeName::A)?, console(NodeName::B)?];
        let status = |c: &mut ConsoleClient| -> Result<String> {
            Ok(c.command("status", Duration::from_secs(30))?.join("\n"))
        };
        // The primary, its peer in sync.
        let deadline = Instant::now() + Duration::from_secs(180);
        let primary = loop {
            let mut found = None;
            for (i, node) in [NodeName::A, NodeName::B].into_iter().enumerate() {
                let s = status(&mut consoles[i])?;
                let own = s
                    .lines()
                    .find(|l| l.starts_with(&format!("{} role:", node.as_str())))
                    .unwrap_or("");
                let peer = node.peer().expect("a data node");
                let peer_line = s.lines().find(|l| {
                    l.trim_start()
                        .starts_with(&format!("{} role:", peer.as_str()))
                });
                if own.contains("role:primary")
                    && own.contains("ana:optimized")
                    && peer_line.is_some_and(|l| l.contains("disk:UpToDate"))
                    && s.contains("replication:Established")
                    && (!s.contains("resync:") || s.contains("(0 of "))
                {
                    found = Some(node);
                }
            }
            if let Some(p) = found {
                break p;
            }
            if Instant::now() > deadline {
                return Err(Error::Bench(
                    "the pair did not get in sync within 180 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let pi = if primary == NodeName::A { 0 } else { 1 };
        let secondary = primary.peer().expect("a data node");
        let subject = Subject {
            name: format!("pair, primary {}", primary.as_str()),
            address: layout.front_end_address(primary).to_string(),
            port: tandem_qemu::layout::NVME_PORT,
            subnqn: layout.nqn.clone(),
            cpu_group: up.setup.running_pid(primary).unwrap_or(0) as i32,
            cpu_single: true,
            tap: Some(tandem_qemu::layout::NetNames::tap(primary, 0)),
        };
        // Listening, and the activity extents of the range in use.
        native::run_job(
            &netns,
            &subject,
            &job_args("randwrite-4k", 1, 8, 2, &["--quiet", "--range", PAIR_RANGE]),
            work,
        )?;
        let run_one = |label: &str, job: &str, c: u32, d: u32| -> Result<Measured> {
            eprintln!("nvme-bench: pair {label}: {job}");
            let args = job_args(job, c, d, o.runtime, &["--range", PAIR_RANGE]);
            let mut m = native::run_job(&netns, &subject, &args, work)?;
            m.target = label.to_string();
            Ok(m)
        };
        // The nodes' own timing around the replicated QD1 job alone.
        let before = [status(&mut consoles[0])?, status(&mut consoles[1])?];
        let qd1 = run_one("replicated", "qd1-randwrite-4k", 1, 1)?;
        let after = [status(&mut consoles[0])?, status(&mut consoles[1])?];
        let ping_ms = (
            ping_median_ms(&netns, &layout.front_end_address(NodeName::A).to_string()),
            ping_median_ms(&netns, &layout.front_end_address(NodeName::B).to_string()),
        );
        let saturated = run_one("replicated", "randwrite-4k", o.connections, o.depth)?;
        let replicated = vec![qd1, saturated];
        let si = 1 - pi;
        let node_times = (|| {
            Some((
                window_avg(&before[pi], &after[pi], "write-time", "local:")?,
                window_avg(&before[pi], &after[pi], "write-time", "peer:")?,
                window_avg(&before[si], &after[si], "apply-time", "apply-time ")?,
            ))
        })();
        eprintln!(
            "nvme-bench: kill -9 of {} (the secondary)",
            secondary.as_str()
        );
        pair::fault(&dir, pair::Fault::Kill, secondary, None)?;
        // The primary records its peer Outdated, then writes alone.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = status(&mut consoles[pi])?;
            let peer_line = s
                .lines()
                .find(|l| {
                    l.trim_start()
                        .starts_with(&format!("{} role:", secondary.as_str()))
                })
                .unwrap_or("");
            if !peer_line.contains("disk:UpToDate") && s.contains("role:primary") {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Bench(format!(
                    "the primary kept its dead peer UpToDate:\n{s}"
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let alone = vec![
            run_one("primary alone", "qd1-randwrite-4k", 1, 1)?,
            run_one("primary alone", "randwrite-4k", o.connections, o.depth)?,
        ];
        Ok(PairReport {
            replicated,
            alone,
            ping_ms,
            node_times,
            primary,
        })
    })();
    let _ = pair::down(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn charts(report: &Report, dir: &Path) -> Result<()> {
    let mut series = Vec::new();
    for target in ["nvmet-tcp", "tandem"] {
        for connections in [1, 2] {
            let points: Vec<(f64, f64)> = report
                .sweep
                .iter()
                .filter(|m| m.target == target && m.result.connections == connections)
                .map(|m| (m.result.depth as f64, m.result.iops()))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: format!(
                        "{target}, {connections} connection{}",
                        if connections > 1 { "s" } else { "" }
                    ),
                    points,
                });
            }
        }
    }
    if !series.is_empty() {
        native::line_chart(
            &dir.join(IOPS_CHART),
            "4 KiB random read: IOPS against queue depth (1 vCPU each, TCG)",
            "queue depth per connection",
            "IOPS",
            &series,
            native::XAxis::Log2,
        )?;
    }
    let mut cdfs = Vec::new();
    let mut add = |m: Option<&Measured>, label: &str| {
        if let Some(m) = m {
            cdfs.push(Series {
                name: format!("{} {label}", m.target),
                points: m
                    .result
                    .latency
                    .cdf
                    .iter()
                    .map(|&(q, us)| (us, q))
                    .collect(),
            });
        }
    };
    for target in ["nvmet-tcp", "tandem"] {
        add(find(&report.jobs, target, "qd1-randread-4k"), "QD1");
    }
    for m in &report.open_loop {
        add(
            Some(m),
            &format!("open loop {}/s", m.result.rate.unwrap_or(0)),
        );
    }
    for target in ["nvmet-tcp", "tandem"] {
        let m = find(&report.jobs, target, "randread-4k");
        let label = m
            .map(|m| format!("{} × QD{}", m.result.connections, m.result.depth))
            .unwrap_or_default();
        add(m, &label);
    }
    native::line_chart(
        &dir.join(CDF_CHART),
        "4 KiB random read latency, CDF",
        "latency (µs)",
        "fraction of I/Os",
        &cdfs,
        native::XAxis::Log10,
    )
}

fn render(o: &Options, report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{HEADING}\n");
    let _ = writeln!(
        s,
        "Written by `tests/linux/bench.sh native --write-docs` (`nvme-bench compare`). The load comes from \
         this machine, not from a VM: `cargo tandem bench nvme`, the native NVMe/TCP load generator \
         (`qemu/src/nvme_load.rs`, the `nvme` crate's initiator over std sockets, one thread per \
         connection), run inside a private network namespace where Linux's nvmet-tcp (10.0.0.10) and the \
         tandem image (10.0.0.11) each sit in a TCG guest on a tap of one bridge, with the same vCPUs, RAM, \
         virtio-net NIC and a raw disk file of the same size on virtio-blk (cache=writeback). Every job \
         runs on one target and then the other, the order alternating from job to job, {} s measured after \
         1 s of ramp. Target CPU is its QEMU process's (every thread, `/proc/<pid>/stat`) over the job, \
         per I/O of the job; frames are those on its tap, both ways, per I/O. Only the ratios within one \
         run mean anything on this shared machine.\n",
        o.runtime
    );
    let _ = writeln!(
        s,
        "- date: {}",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let _ = writeln!(
        s,
        "- machine: {model}, {} cores, shared with other work: load average (1 min) {} at the start, {} at the end",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        report.load_start,
        report.load_end
    );
    let qemu = command_line("qemu-system-x86_64", &["--version"]);
    let _ = writeln!(
        s,
        "- {}; nvmet-tcp `-accel tcg,thread=multi -cpu max`, Debian kernel {}; tandem `-accel tcg -cpu max`, built from this tree",
        qemu.lines().next().unwrap_or("QEMU"),
        report.kernel
    );
    let _ = writeln!(
        s,
        "- each target: {} vCPU, {} MiB, {} MiB raw disk file; idle before the jobs: {}",
        o.shape.vcpus,
        o.shape.memory_mib,
        o.disk_mib,
        report
            .idle_share
            .iter()
            .map(|(n, x)| format!("{n} {:.1} % of a core", x * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "- whole run {:.0} s wall\n", report.wall.as_secs_f64());

    // Goals.
    let _ = writeln!(s, "### Goals (issue 15), this run\n");
    let _ = writeln!(
        s,
        "| figure | nvmet-tcp | tandem | tandem / nvmet-tcp | goal | met |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
    let pair_of = |job: &str| {
        Some((
            find(&report.jobs, "nvmet-tcp", job)?,
            find(&report.jobs, "tandem", job)?,
        ))
    };
    let mut cpu_rows = Vec::new();
    for (job, goal) in [
        ("randread-4k", 1.5),
        ("randwrite-4k", 1.5),
        ("randrw-4k", 1.5),
        ("read-128k", 1.0),
        ("write-128k", 1.0),
    ] {
        if let Some((n, t)) = pair_of(job) {
            let label = format!("{job} {} × QD{} IOPS", t.result.connections, t.result.depth);
            s.push_str(&native::ratio_row(
                &label,
                n.result.iops(),
                t.result.iops(),
                "",
                Some((goal, true)),
            ));
            cpu_rows.push((job, n.cpu_per_io_us(), t.cpu_per_io_us()));
        }
    }
    if let Some((n, t)) = pair_of("qd1-randread-4k") {
        s.push_str(&native::ratio_row(
            "QD1 random read p50",
            n.result.latency.p50_us,
            t.result.latency.p50_us,
            "µs",
            Some((0.8, false)),
        ));
        s.push_str(&native::ratio_row(
            "QD1 random read p99",
            n.result.latency.p99_us,
            t.result.latency.p99_us,
            "µs",
            Some((0.8, false)),
        ));
    }
    for (job, n, t) in &cpu_rows {
        s.push_str(&native::ratio_row(
            &format!("host CPU per I/O, {job}"),
            *n,
            *t,
            "µs",
            Some((0.5, false)),
        ));
    }
    if let Some(p) = &report.pair {
        if let (Some(r), Some(a)) = (
            p.replicated
                .iter()
                .find(|m| m.result.spec_name == "randwrite-4k"),
            p.alone
                .iter()
                .find(|m| m.result.spec_name == "randwrite-4k"),
        ) {
            let _ = writeln!(
                s,
                "| pair: replicated / unreplicated 4 KiB random write IOPS at {} × QD{} | {:.0} alone | {:.0} replicated | {:.2}× | ≥ 0.8× | {} |",
                r.result.connections,
                r.result.depth,
                a.result.iops(),
                r.result.iops(),
                r.result.iops() / a.result.iops(),
                if r.result.iops() / a.result.iops() >= 0.8 {
                    "yes"
                } else {
                    "no"
                }
            );
        }
    }
    s.push('\n');

    if !report.failures.is_empty() {
        let _ = writeln!(
            s,
            "Jobs that failed in this run (left out of the tables):\n"
        );
        for f in &report.failures {
            let _ = writeln!(s, "- {f}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "### Every job\n");
    s.push_str(&native::render_jobs(&report.jobs));
    s.push('\n');
    let _ = writeln!(
        s,
        "Latency under the same fixed load (open loop: commands start at a fixed rate, half the slower \
         target's saturated random-read IOPS; latency counts from when each command was due):\n"
    );
    s.push_str(&native::render_jobs(&report.open_loop));
    s.push('\n');
    let _ = writeln!(s, "![4 KiB random read latency CDF]({CDF_CHART})\n");

    if !report.sweep.is_empty() {
        let _ = writeln!(s, "### Was the generator the bottleneck?\n");
        let gen_max = report
            .jobs
            .iter()
            .chain(&report.sweep)
            .map(|m| m.result.generator_cpu_share())
            .fold(0.0, f64::max);
        let gen_per_io = report
            .jobs
            .iter()
            .filter(|m| m.result.block_size == 4096 && m.result.depth > 1)
            .map(|m| m.result.generator_cpu_s * 1e6 / (m.result.iops() * m.result.wall_s).max(1.0))
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "No: the generator used at most {:.0} % of one core in any job (column *generator CPU*; at most {:.0} µs per 4 KiB I/O), \
             while each target's QEMU was busy (column *target QEMU CPU*). And more load does not bring more \
             IOPS once a target saturates: 4 KiB random reads at 1 and 2 connections × queue depths {} ({} s each):\n",
            gen_max * 100.0,
            gen_per_io,
            o.depths
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            o.sweep_runtime
        );
        s.push_str(&native::render_jobs(&report.sweep));
        let _ = writeln!(s, "\n![IOPS against queue depth]({IOPS_CHART})\n");
    }

    if !report.scaling.is_empty() {
        let _ = writeln!(s, "### A second vCPU\n");
        let best = |rows: &[Measured], target: &str, job: &str| {
            rows.iter()
                .filter(|m| m.target == target && m.result.spec_name == job)
                .map(|m| m.result.iops())
                .fold(0.0, f64::max)
        };
        let _ = writeln!(
            s,
            "nvmet-tcp booted again with 2 vCPUs (`-smp 2`, multi-threaded TCG: one host thread per vCPU), \
             alone on the machine, same disk, {} s per job:\n",
            o.runtime
        );
        s.push_str(&native::render_jobs(&report.scaling));
        s.push('\n');
        if !report.jobs.is_empty() {
            let _ = writeln!(
                s,
                "| 4 KiB random | nvmet-tcp 1 vCPU | nvmet-tcp 2 vCPUs | gain | tandem (one event loop) |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        }
        let mut gains = Vec::new();
        for job in ["randread-4k", "randwrite-4k"]
            .into_iter()
            .filter(|_| !report.jobs.is_empty())
        {
            let one =
                best(&report.jobs, "nvmet-tcp", job).max(best(&report.sweep, "nvmet-tcp", job));
            let two = best(&report.scaling, "nvmet-tcp 2 vCPUs", job);
            let t = best(&report.jobs, "tandem", job).max(best(&report.sweep, "tandem", job));
            let _ = writeln!(
                s,
                "| {job} IOPS (best seen) | {one:.0} | {two:.0} | {:.2}× | {t:.0} |",
                two / one.max(1.0)
            );
            gains.push((job, one, two, t));
        }
        s.push('\n');
        if !gains.is_empty() {
            let share = report
                .scaling
                .iter()
                .map(Measured::target_cpu_share)
                .fold(0.0, f64::max);
            let text: Vec<String> = gains
                .iter()
                .map(|(job, one, two, t)| {
                    format!(
                        "{job} {:.2}× (tandem on one vCPU: {:.2}× nvmet-tcp on two)",
                        two / one.max(1.0),
                        t / two.max(1.0)
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "What a second vCPU gives on this 2-core machine: nvmet-tcp, whose I/O work runs per queue on \
                 each CPU, {}; its QEMU used at most {:.0} % of a host core with 2 vCPUs, with the other \
                 half of the machine taken by other work and the generator. tandem runs one event loop on one \
                 vCPU: a second vCPU gives it nothing it can use, so one host core's worth of emulated CPU is \
                 its ceiling per node, and the figures above are that ceiling.\n",
                text.join(", "),
                share * 100.0
            );
        }
    }

    if let Some(p) = &report.pair {
        let _ = writeln!(
            s,
            "### The HA pair: replicated against unreplicated writes\n"
        );
        let _ = writeln!(
            s,
            "The pair as `cargo tandem up` lays it out (a, b, the witness; front-end 10.77.0.0/24, replication \
             10.78.0.0/24, default timing, 64 MiB nodes, {} MiB disks, TCG), after the single targets above were \
             stopped; the generator on the front-end bridge of the pair's namespace, against the primary ({}). \
             First while the pair is in sync (every write on both disks before it completes), then after the \
             secondary was killed (`fault kill`) and recorded Outdated, so the primary writes alone. The \
             writes go to the first {PAIR_RANGE}iB of the namespace (its activity extents stay hot, as in the Linux \
             host's HA benchmark below), after 2 s of warm-up writes there.\n",
            o.disk_mib,
            p.primary.as_str()
        );
        let rows: Vec<Measured> = p.replicated.iter().chain(&p.alone).cloned().collect();
        s.push_str(&native::render_jobs(&rows));
        s.push('\n');
        if let (Some(r), Some(a)) = (
            p.replicated
                .iter()
                .find(|m| m.result.spec_name == "qd1-randwrite-4k"),
            p.alone
                .iter()
                .find(|m| m.result.spec_name == "qd1-randwrite-4k"),
        ) {
            let rtt_us = (p.ping_ms.0 + p.ping_ms.1) * 1000.0;
            let _ = writeln!(
                s,
                "At QD1 a replicated 4 KiB write took {:.0} µs (p50; mean {:.0}) against {:.0} µs (mean {:.0}) alone: \
                 replication added {:.0} µs at the median. One round trip between the two nodes, measured in the \
                 same run: a frame from a to b and back crosses both nodes' QEMUs and the bridge, as a ping from \
                 the namespace to a ({:.0} µs, median of 200) and one to b ({:.0} µs) do together: {:.0} µs. \
                 **Replicated QD1 latency minus that round trip: {:.0} µs (p50), {:.0} µs (mean)** — against {:.0} µs \
                 (p50) for the primary writing alone.",
                r.result.latency.p50_us,
                r.result.latency.mean_us,
                a.result.latency.p50_us,
                a.result.latency.mean_us,
                r.result.latency.p50_us - a.result.latency.p50_us,
                p.ping_ms.0 * 1000.0,
                p.ping_ms.1 * 1000.0,
                rtt_us,
                r.result.latency.p50_us - rtt_us,
                r.result.latency.mean_us - rtt_us,
                a.result.latency.p50_us,
            );
            if let Some((local, peer, apply)) = p.node_times {
                let _ = writeln!(
                    s,
                    " The nodes' own timing over the replicated QD1 job (`status`: `write-time`, `apply-time`): the \
                     local disk write {local:.0} µs on average, the peer's acknowledgement {peer:.0} µs, of which \
                     the secondary's own work {apply:.0} µs — so the trips between the nodes, as the primary saw \
                     them, took {:.0} µs.",
                    peer - apply
                );
            }
            s.push('\n');
        }
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("generate") {
        return generate(&args[1..]);
    }
    let o = match args.first().map(String::as_str) {
        Some("compare") => match parse_args(&args[1..]) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("nvme-bench: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: nvme-bench compare [--write-docs] [OPTIONS] | generate ARGS");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut report = Report {
        load_start: load_average(),
        ..Default::default()
    };
    let work = tandem_linux_guest::image::guest_dir().join("runs/nvme-bench");
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&work).map_err(|e| Error::io("creating the work directory", e))?;
        let image = GuestImage::ensure()?;
        report.kernel = image.kernel_version.clone();
        // Build before anything boots, so the build competes with nothing.
        tandem_image()?;
        run_compare(&o, &image, &mut report, &work)?;
        if !o.skip.iter().any(|s| s == "pair") {
            report.pair = Some(run_pair(&o, &work)?);
        }
        Ok(())
    })();
    report.wall = started.elapsed();
    report.load_end = load_average();
    if let Err(e) = result {
        eprintln!("nvme-bench: {e}");
        return ExitCode::FAILURE;
    }
    let section = render(&o, &report);
    println!("{section}");
    let docs: PathBuf = if o.write_docs {
        repo_root().join("docs")
    } else {
        work.clone()
    };
    if report.jobs.is_empty() {
        eprintln!("nvme-bench: no single-target jobs, no charts");
    } else if let Err(e) = charts(&report, &docs) {
        eprintln!("nvme-bench: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("nvme-bench: charts in {}", docs.display());
    if o.write_docs {
        let path = docs.join("benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, replace_section(&doc, HEADING, &section)) {
            eprintln!("nvme-bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("nvme-bench: updated {}", path.display());
    }
    ExitCode::SUCCESS
}

/// `cargo tandem bench nvme`, in this process.
fn generate(args: &[String]) -> ExitCode {
    let result = tandem_qemu::cli::parse_bench_nvme(args)
        .and_then(|a| tandem_qemu::nvme_load::run_all(&a, &mut std::io::stderr()));
    match result {
        Ok(results) if results.iter().all(JobResult::ok) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("nvme-bench generate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_stats_average_over_a_window() {
        let before = "  write-time local:avg:100us max:900us n:10 peer:avg:300us max:2000us n:10\n  apply-time avg:50us max:80us n:10";
        let after = "  write-time local:avg:150us max:900us n:20 peer:avg:400us max:2000us n:20\n  apply-time avg:60us max:80us n:20";
        assert_eq!(
            window_avg(before, after, "write-time", "local:"),
            Some(200.0)
        );
        assert_eq!(
            window_avg(before, after, "write-time", "peer:"),
            Some(500.0)
        );
        assert_eq!(
            window_avg(before, after, "apply-time", "apply-time "),
            Some(70.0)
        );
        assert_eq!(
            window_avg("", after, "apply-time", "apply-time "),
            Some(60.0)
        );
        assert_eq!(window_avg(after, after, "apply-time", "apply-time "), None);
    }

    fn row(target: &str, job: &str, c: u32, d: u32, iops: f64) -> Measured {
        let spec = tandem_qemu::nvme_load::JobSpec::named(job, c, d).unwrap();
        Measured {
            target: target.into(),
            result: JobResult {
                spec_name: job.into(),
                description: spec.describe(),
                connections: spec.connections,
                depth: spec.depth,
                rate: None,
                block_size: spec.block_size,
                ios: (iops * 10.0) as u64,
                bytes: (iops * 10.0) as u64 * spec.block_size as u64,
                seconds: 10.0,
                latency: tandem_qemu::nvme_load::Latency {
                    mean_us: 1e6 / iops,
                    p50_us: 1e6 / iops,
                    p90_us: 2e6 / iops,
                    p99_us: 3e6 / iops,
                    p999_us: 4e6 / iops,
                    max_us: 5e6 / iops,
                    cdf: vec![(0.0, 1e5 / iops), (0.5, 1e6 / iops), (1.0, 5e6 / iops)],
                },
                errors: 0,
                first_error: None,
                verify_failures: 0,
                first_verify_failure: None,
                generator_cpu_s: 0.5,
                wall_s: 11.0,
            },
            target_cpu_s: 9.0,
            frames: Some((1000, 1000)),
        }
    }

    #[test]
    fn the_whole_report_renders_and_draws() {
        let o = parse_args(&[]).unwrap();
        let mut r = Report::default();
        for (t, k) in [("nvmet-tcp", 1.0), ("tandem", 2.0)] {
            for job in JOBS {
                r.jobs.push(row(t, job, 2, 32, 1000.0 * k));
            }
            let mut open = row(t, "randread-4k", 2, 32, 500.0);
            open.result.rate = Some(500);
            r.open_loop.push(open);
            for c in [1, 2] {
                for d in [1, 4, 32] {
                    r.sweep
                        .push(row(t, "randread-4k", c, d, 100.0 * d as f64 * k));
                }
            }
        }
        r.scaling
            .push(row("nvmet-tcp 2 vCPUs", "randread-4k", 2, 32, 1500.0));
        r.scaling
            .push(row("nvmet-tcp 2 vCPUs", "randwrite-4k", 2, 32, 1400.0));
        r.pair = Some(PairReport {
            replicated: vec![
                row("replicated", "qd1-randwrite-4k", 1, 1, 1000.0),
                row("replicated", "randwrite-4k", 2, 32, 4000.0),
            ],
            alone: vec![
                row("primary alone", "qd1-randwrite-4k", 1, 1, 2000.0),
                row("primary alone", "randwrite-4k", 2, 32, 8000.0),
            ],
            ping_ms: (0.2, 0.25),
            node_times: Some((150.0, 500.0, 100.0)),
            primary: NodeName::A,
        });
        let text = render(&o, &r);
        for needle in [
            "| randread-4k 2 × QD32 IOPS | 1000  | 2000  | 2.00× | ≥ 1.5× | yes |",
            "| QD1 random read p50 | 1000 µs | 500 µs | 0.50× | ≤ 0.8× | yes |",
            "| 0.50× | ≥ 0.8× | no |",
            "randwrite-4k 1.40×",
            "450 µs",
            "![IOPS against queue depth]",
            "![4 KiB random read latency CDF]",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let dir = std::env::temp_dir().join(format!("nvme-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        charts(&r, &dir).unwrap();
        assert!(dir.join(IOPS_CHART).exists() && dir.join(CDF_CHART).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ping_medians() {
        let out = "64 bytes from 10.77.0.1: icmp_seq=1 ttl=64 time=0.210 ms\n\
                   64 bytes from 10.77.0.1: icmp_seq=2 ttl=64 time=9.50 ms\n\
                   64 bytes from 10.77.0.1: icmp_seq=3 ttl=64 time=0.180 ms\n\
                   rtt min/avg/max/mdev = 0.180/3.296/9.500/4.4 ms";
        assert_eq!(median_rtt_ms(out), 0.210);
        assert!(median_rtt_ms("").is_nan());
    }

    #[test]
    fn arguments() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&a("--runtime 3 --depths 1,8 --skip pair --write-docs")).unwrap();
        assert_eq!(
            (o.runtime, o.depths.clone(), o.write_docs),
            (3, vec![1, 8], true)
        );
        assert_eq!(o.skip, ["pair"]);
        assert!(parse_args(&a("--depths 1,x")).is_err());
        assert!(parse_args(&a("--bogus")).is_err());
    }
}
