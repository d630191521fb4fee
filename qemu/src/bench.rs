//! `cargo tandem bench boot`: the figures of the image's first stage
//! (boot time, size, memory floor, idle CPU), written as the Boot section
//! of docs/benchmarks.md. A measurement, not a test.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::accel::Accel;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::vm::{NetBackend, VmSpec};

/// Heading of the section this benchmark owns in docs/benchmarks.md.
pub const SECTION_HEADING: &str = "## Boot";

/// How long one boot may take before it counts as failed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// A boot in the memory bisection fails faster: it either works in well
/// under a second or does not work.
const MEMORY_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle CPU is measured over this window, after this settling time.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
const IDLE_SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct BootFigures {
    /// Wall time from QEMU's start to the ready line, per run, sorted.
    pub wall_ms: Vec<f64>,
    /// The image's own `<ms>` figure from the ready line, per run, sorted.
    pub guest_ms: Vec<u64>,
    pub image_bytes: u64,
    /// Smallest `-m` (MiB) that reached ready, or `None` if even 64 failed.
    pub min_memory_mib: Option<u32>,
    /// Host CPU time of the idle VM's QEMU as a percentage of one core.
    pub idle_cpu_percent: f64,
}

/// The VM every measurement boots: one user-networking NIC (DHCP) and one
/// small disk, like a node with its front-end NIC.
fn bench_spec(dir: &Path, image: &Path, memory_mib: u32) -> Result<VmSpec> {
    let disk = dir.join("disk0.img");
    if !disk.exists() {
        crate::disk::create_sparse(&disk, 64 << 20)?;
    }
    let mut spec = VmSpec::new("bench", dir, image, "", Accel::Tcg)
        .disk(&disk)
        .nic(
            0,
            NetBackend::User {
                forwards: vec![],
                tftp: None,
            },
        );
    spec.memory_mib = memory_mib;
    spec.no_reboot = true;
    Ok(spec)
}

/// One boot: wall milliseconds to ready and the image's own figure.
fn boot_once(
    dir: &Path,
    image: &Path,
    memory_mib: u32,
    timeout: Duration,
) -> Result<(f64, u64, Node)> {
    let mut node = Node::spawn(bench_spec(dir, image, memory_mib)?)?;
    let ready = node.wait_ready(timeout)?;
    let wall = node.started().elapsed().as_secs_f64() * 1000.0;
    Ok((wall, ready.ms, node))
}

/// Runs all boot measurements; progress goes to stderr.
pub fn measure(image: &Path, runs: usize) -> Result<BootFigures> {
    let dir = crate::TempDir::new("bench")?;
    let image_bytes = std::fs::metadata(image)
        .map_err(|e| Error::io(image.display().to_string(), e))?
        .len();

    let mut wall_ms = Vec::new();
    let mut guest_ms = Vec::new();
    for run in 1..=runs {
        let (wall, guest, _node) = boot_once(
            dir.path(),
            image,
            crate::vm::DEFAULT_MEMORY_MIB,
            BOOT_TIMEOUT,
        )?;
        eprintln!("boot {run}/{runs}: {wall:.0} ms to ready (image says {guest} ms)");
        wall_ms.push(wall);
        guest_ms.push(guest);
    }
    wall_ms.sort_by(f64::total_cmp);
    guest_ms.sort_unstable();

    // Bisect the smallest -m: `hi` reaches ready, `lo` does not.
    let boots = |mib: u32| boot_once(dir.path(), image, mib, MEMORY_PROBE_TIMEOUT).is_ok();
    let min_memory_mib = if boots(crate::vm::DEFAULT_MEMORY_MIB) {
        let (mut lo, mut hi) = (0u32, crate::vm::DEFAULT_MEMORY_MIB);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let ok = boots(mid);
            eprintln!(
                "-m {mid}M: {}",
                if ok { "ready" } else { "did not reach ready" }
            );
            if ok { hi = mid } else { lo = mid }
        }
        Some(hi)
    } else {
        None
    };

    let (_, _, node) = boot_once(
        dir.path(),
        image,
        crate::vm::DEFAULT_MEMORY_MIB,
        BOOT_TIMEOUT,
    )?;
    std::thread::sleep(IDLE_SETTLE);
    let before = cpu_ticks(node.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let after = cpu_ticks(node.pid())?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(node);
    let idle_cpu_percent = (after - before) as f64 / clock_ticks_per_second() / elapsed * 100.0;
    eprintln!("idle: {idle_cpu_percent:.2} % of a core over {elapsed:.1} s");

    Ok(BootFigures {
        wall_ms,
        guest_ms,
        image_bytes,
        min_memory_mib,
        idle_cpu_percent,
    })
}

/// utime + stime of a process, in clock ticks, from /proc/<pid>/stat.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| Error::io(path.clone(), e))?;
    parse_cpu_ticks(&stat)
        .ok_or_else(|| Error::io(path, std::io::Error::other("unexpected format")))
}

/// Fields 14 and 15 of /proc/<pid>/stat; the command name (field 2) may
/// contain spaces, so fields are counted after its closing parenthesis.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) use crate::sys::clock_ticks_per_second;

fn median<T: Copy + Into<f64>>(sorted: &[T]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2].into()
    } else {
        (sorted[n / 2 - 1].into() + sorted[n / 2].into()) / 2.0
    }
}

/// Facts about the machine, for the report.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub qemu_version: String,
    pub date: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let qemu_version = crate::node::find_qemu()
            .ok()
            .and_then(|q| std::process::Command::new(q).arg("--version").output().ok())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "QEMU (version unknown)".into());
        let days = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        Machine {
            cpu_model,
            cores,
            qemu_version,
            date: civil_date(days as i64),
        }
    }
}

/// `YYYY-MM-DD` for a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The markdown section for docs/benchmarks.md.
pub fn render(figures: &BootFigures, machine: &Machine) -> String {
    let runs = figures.wall_ms.len();
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_HEADING}\n");
    let _ = writeln!(
        s,
        "Measured with `cargo tandem bench boot` on {} — {}, {} cores; {}; TCG (`-accel tcg -cpu max`), \
         `-M q35 -nodefaults`, one virtio-net NIC on user networking (DHCP), one 64 MiB virtio-blk disk.\n",
        machine.date, machine.cpu_model, machine.cores, machine.qemu_version
    );
    let _ = writeln!(s, "| figure | value | goal |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| boot to `tandem: ready`, wall time from QEMU's start (median of {runs}) | {:.0} ms (min {:.0}, max {:.0}) | ≤ 300 ms |",
        median(&figures.wall_ms),
        figures.wall_ms.first().copied().unwrap_or(f64::NAN),
        figures.wall_ms.last().copied().unwrap_or(f64::NAN),
    );
    let _ = writeln!(
        s,
        "| the same, as the image counts it (`ready <ms> ms`, median) | {:.0} ms | |",
        median(
            &figures
                .guest_ms
                .iter()
                .map(|&m| m as f64)
                .collect::<Vec<_>>()
        )
    );
    let _ = writeln!(
        s,
        "| image size | {:.0} KiB ({} bytes) | ≤ 2 MiB |",
        figures.image_bytes as f64 / 1024.0,
        figures.image_bytes
    );
    let memory = match figures.min_memory_mib {
        Some(m) => format!("{m} MiB"),
        None => "did not reach ready at 64 MiB".into(),
    };
    let _ = writeln!(
        s,
        "| smallest `-m` that reaches ready (bisected) | {memory} | ≤ 64 MiB |"
    );
    let _ = writeln!(
        s,
        "| host CPU of the idle VM's QEMU over {} s (`/proc/<pid>/stat` utime+stime) | {:.2} % of one core | ≤ 2 % |",
        IDLE_WINDOW.as_secs(),
        figures.idle_cpu_percent
    );
    let _ = writeln!(
        s,
        "\nWall times include QEMU's own start-up and firmware (SeaBIOS) and are read by polling the console log every 5 ms."
    );
    s
}

/// Replaces the section starting with `heading` (up to the next `## `
/// heading) in `document`, or appends it.
pub fn replace_section(document: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end_matches('\n');
    let lines: Vec<&str> = document.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == heading) else {
        let mut out = document.trim_end_matches('\n').to_string();
        if out.is_empty() {
            out.push_str("# Benchmarks");
        }
        out.push_str("\n\n");
        out.push_str(section);
        out.push('\n');
        return out;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_parse_after_the_command_name() {
        let stat =
            "4242 (qemu-system-x86 (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 137 42 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(179));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let own = cpu_ticks(std::process::id()).unwrap();
        assert!(own < 1 << 40);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_780), "2026-11-23");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[1.0, 3.0, 2.0][..1]), 1.0);
        assert_eq!(median(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), 2.5);
    }

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let doc = "# Benchmarks\n\nintro\n\n## Boot\n\nold\n\n## NVMe\n\nkeep me\n";
        let out = replace_section(doc, "## Boot", "## Boot\n\nnew\n");
        assert_eq!(
            out,
            "# Benchmarks\n\nintro\n\n## Boot\n\nnew\n\n## NVMe\n\nkeep me\n"
        );
        let out = replace_section(
            "# Benchmarks\n\n## NVMe\n\nx\n",
            "## Boot",
            "## Boot\n\nnew\n",
        );
        assert_eq!(out, "# Benchmarks\n\n## NVMe\n\nx\n\n## Boot\n\nnew\n");
        assert_eq!(
            replace_section("", "## Boot", "## Boot\n\nnew"),
            "# Benchmarks\n\n## Boot\n\nnew\n"
        );
        let last = replace_section("# B\n\n## Boot\n\nold\n", "## Boot", "## Boot\n\nnew\n");
        assert_eq!(last, "# B\n\n## Boot\n\nnew\n");
    }

    #[test]
    fn report_names_every_figure() {
        let figures = BootFigures {
            wall_ms: vec![250.0, 260.0, 300.0],
            guest_ms: vec![100, 110, 120],
            image_bytes: 300 * 1024,
            min_memory_mib: Some(6),
            idle_cpu_percent: 0.5,
        };
        let machine = Machine {
            cpu_model: "CPU".into(),
            cores: 2,
            qemu_version: "QEMU 7.2".into(),
            date: "2026-11-23".into(),
        };
        let text = render(&figures, &machine);
        assert!(text.starts_with("## Boot\n"));
        for needle in [
            "260 ms (min 250, max 300)",
            "| 110 ms |",
            "300 KiB",
            "6 MiB",
            "0.50 % of one core",
            "2026-11-23",
            "2 cores",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
