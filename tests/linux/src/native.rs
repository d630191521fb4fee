//! The native load generator (`cargo tandem bench nvme`) against targets in
//! a network namespace, for the side-by-side benchmark
//! (`src/bin/nvme-bench.rs`): each job runs in a child process inside the
//! namespace (`ip netns exec`), so that its sockets are there and its CPU
//! is its own; what a target's VM did meanwhile (host CPU of its QEMU,
//! frames on its tap) is read around it. Also the report's tables and
//! pictures.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tandem_qemu::nvme_load::JobResult;

use crate::error::{Error, Result};

/// CPU time (user + system) of the processes in process group `group` (a
/// Linux guest's QEMU and its helpers), or of process `group` alone when
/// `single`; from `/proc/<pid>/stat`.
pub fn cpu_of(group: i32, single: bool) -> Option<Duration> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let parse = |stat: &str| -> Option<(i32, u64)> {
        // After the command name, which may hold spaces: state, ppid,
        // pgrp, …, utime (14th field of the line), stime (15th).
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let pgrp = fields.get(2)?.parse().ok()?;
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((pgrp, ticks))
    };
    let ticks = if single {
        let stat = std::fs::read_to_string(format!("/proc/{group}/stat")).ok()?;
        parse(&stat)?.1
    } else {
        let mut ticks = 0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((pgrp, t)) = parse(&stat) {
                if pgrp == group {
                    ticks += t;
                }
            }
        }
        ticks
    };
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second))
}

/// A target as the generator sees it, and how to watch its VM.
#[derive(Clone, Debug)]
pub struct Subject {
    /// Short name in the report (`nvmet-tcp`, `tandem`).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub subnqn: String,
    /// Its QEMU: a process group (Linux guests) or one process.
    pub cpu_group: i32,
    pub cpu_single: bool,
    /// Its tap, for frame counts (`None`: not counted).
    pub tap: Option<String>,
}

/// One job against one target, and what its VM spent on it.
#[derive(Clone, Debug)]
pub struct Measured {
    pub target: String,
    pub result: JobResult,
    /// Host CPU of the target's QEMU over the job (ramp and drain included).
    pub target_cpu_s: f64,
    /// Frames its tap carried over the job: from the target, to it.
    pub frames: Option<(u64, u64)>,
}

impl Measured {
    /// I/Os over the whole job (ramp and drain included), estimated from
    /// the measured rate; the denominator for CPU and frames per I/O.
    fn ios_in_job(&self) -> f64 {
        (self.result.iops() * self.result.wall_s).max(1.0)
    }
    /// Host CPU of the target per I/O, µs.
    pub fn cpu_per_io_us(&self) -> f64 {
        self.target_cpu_s * 1e6 / self.ios_in_job()
    }
    /// Its QEMU's CPU as a share of one host core.
    pub fn target_cpu_share(&self) -> f64 {
        self.target_cpu_s / self.result.wall_s.max(1e-9)
    }
    /// Frames per I/O (both directions).
    pub fn frames_per_io(&self) -> Option<f64> {
        self.frames
            .map(|(sent, received)| (sent + received) as f64 / self.ios_in_job())
    }
}

/// Reads tap counters inside namespace `netns`: (sent by the guest,
/// delivered to it).
pub fn tap_frames(netns: &str, tap: &str) -> Option<(u64, u64)> {
    let read = |counter: &str| -> Option<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "cat"])
            .arg(format!("/sys/class/net/{tap}/statistics/{counter}"))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    // The tap's receive side is what the guest sent.
    Some((read("rx_packets")?, read("tx_packets")?))
}

/// Runs the generator (this executable's `generate` mode, which is
/// `cargo tandem bench nvme`) inside `netns` against `subject` with the
/// extra arguments `args` (jobs, shape, times), one job; returns what it
/// measured.
pub fn run_job(netns: &str, subject: &Subject, args: &[String], work: &Path) -> Result<Measured> {
    let json = work.join(format!("job-{}-{}.json", subject.name, std::process::id()));
    let _ = std::fs::remove_file(&json);
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    let cpu_before = cpu_of(subject.cpu_group, subject.cpu_single);
    let frames_before = subject.tap.as_deref().and_then(|t| tap_frames(netns, t));
    let status = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&exe)
        .arg("generate")
        .args(["--address", &subject.address])
        .args(["--port", &subject.port.to_string()])
        .args(["--subnqn", &subject.subnqn])
        .arg("--json")
        .arg(&json)
        .args(args)
        .status()
        .map_err(|e| Error::io("running the load generator", e))?;
    let cpu_after = cpu_of(subject.cpu_group, subject.cpu_single);
    let frames_after = subject.tap.as_deref().and_then(|t| tap_frames(netns, t));
    let text = std::fs::read_to_string(&json).map_err(|e| {
        Error::Bench(format!(
            "the load generator against {} left no results ({status}): {e}",
            subject.name
        ))
    })?;
    let _ = std::fs::remove_file(&json);
    let result = tandem_qemu::nvme_load::read_json(&text)
        .and_then(|mut v| v.pop())
        .ok_or_else(|| Error::Bench(format!("unreadable generator results: {text}")))?;
    if !status.success() || !result.ok() {
        return Err(Error::Bench(format!(
            "{} against {}: {status}; {:?} {:?}",
            result.spec_name, subject.name, result.first_error, result.first_verify_failure
        )));
    }
    let target_cpu_s = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => a.saturating_sub(b).as_secs_f64(),
        _ => f64::NAN,
    };
    let frames = frames_before
        .zip(frames_after)
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)));
    Ok(Measured {
        target: subject.name.clone(),
        result,
        target_cpu_s,
        frames,
    })
}

/// The per-job table of one target or several.
pub fn render_jobs(rows: &[Measured]) -> String {
    let mut s = String::from(
        "| job | target | conns × QD | IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | target CPU / I/O | target QEMU CPU | frames / I/O | generator CPU |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in rows {
        let r = &m.result;
        let _ = writeln!(
            s,
            "| {} | {} | {} × {}{} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} µs | {:.0} % | {} | {:.0} % |",
            r.spec_name,
            m.target,
            r.connections,
            r.depth,
            r.rate.map(|x| format!(" @ {x}/s")).unwrap_or_default(),
            r.iops(),
            r.mib_s(),
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            m.cpu_per_io_us(),
            m.target_cpu_share() * 100.0,
            m.frames_per_io().map_or("–".into(), |f| format!("{f:.2}")),
            r.generator_cpu_share() * 100.0,
        );
    }
    s
}

/// A ratio cell: `b / a` with the goal and whether it is met.
pub fn ratio_row(label: &str, a: f64, b: f64, unit: &str, goal: Option<(f64, bool)>) -> String {
    let ratio = b / a;
    let (goal_text, met) = match goal {
        Some((g, higher_is_better)) => {
            let met = if higher_is_better {
                ratio >= g
            } else {
                ratio <= g
            };
            (
                format!("{} {g}×", if higher_is_better { "≥" } else { "≤" }),
                if met { "yes" } else { "no" },
            )
        }
        None => (String::new(), ""),
    };
    format!("| {label} | {a:.0} {unit} | {b:.0} {unit} | {ratio:.2}× | {goal_text} | {met} |\n")
}

// ------------------------------------------------------------- pictures

/// One line of a chart: a name and its points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn register_font() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font travels in the binary: no system font needed.
        let _ = plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn draw_error(e: impl std::fmt::Display) -> Error {
    Error::Bench(format!("drawing a chart: {e}"))
}

const COLORS: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(0xd6, 0x27, 0x28),
    plotters::style::RGBColor(0x1f, 0x77, 0xb4),
    plotters::style::RGBColor(0xff, 0x7f, 0x0e),
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c),
    plotters::style::RGBColor(0x94, 0x67, 0xbd),
    plotters::style::RGBColor(0x8c, 0x56, 0x4b),
];

/// How a chart's x axis is scaled (y is always linear).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    /// Powers of two, evenly spaced (queue depths).
    Log2,
    /// Decades (latencies).
    Log10,
}

/// A PNG line chart.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_axis: XAxis,
) -> Result<()> {
    use plotters::prelude::*;
    register_font();
    let log2 = x_axis == XAxis::Log2;
    let x_log = x_axis == XAxis::Log10;
    let series: Vec<Series> = if log2 {
        series
            .iter()
            .map(|s| Series {
                name: s.name.clone(),
                points: s
                    .points
                    .iter()
                    .map(|&(x, y)| (x.max(1e-9).log2(), y))
                    .collect(),
            })
            .collect()
    } else {
        series
            .iter()
            .map(|s| Series {
                name: s.name.clone(),
                points: s.points.clone(),
            })
            .collect()
    };
    let series = &series[..];
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(Error::Bench(format!("{title}: nothing to draw")));
    }
    if x_log {
        x0 = x0.max(1e-3) * 0.9;
        x1 *= 1.1;
    } else if log2 {
        x0 = x0.floor() - 0.25;
        x1 = x1.ceil() + 0.25;
    } else if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let x_ticks = if log2 {
        (x1 - x0).ceil() as usize + 1
    } else {
        10
    };
    let y1 = y1 * 1.08 + 1e-9;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels(x_ticks)
                .x_label_formatter(&|x: &f64| {
                    if log2 {
                        format!("{:.0}", 2f64.powf(*x))
                    } else {
                        format!("{x:.0}")
                    }
                })
                .y_label_formatter(&|y: &f64| {
                    if *y <= 1.0 {
                        format!("{y:.1}")
                    } else {
                        format!("{y:.0}")
                    }
                })
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .draw()
                .map_err(draw_error)?;
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(draw_error)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                    });
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(draw_error)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(draw_error)?;
        }};
    }
    if x_log {
        finish!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), 0f64..y1)
                .map_err(draw_error)?
        );
    } else {
        finish!(
            builder
                .build_cartesian_2d(x0..x1, 0f64..y1)
                .map_err(draw_error)?
        );
    }
    root.present().map_err(draw_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_without_system_fonts() {
        let dir = std::env::temp_dir().join(format!("tandem-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.png");
        let series = [
            Series {
                name: "a".into(),
                points: vec![(1.0, 10.0), (4.0, 30.0), (32.0, 35.0)],
            },
            Series {
                name: "b".into(),
                points: vec![(1.0, 12.0), (4.0, 40.0), (32.0, 60.0)],
            },
        ];
        line_chart(&path, "IOPS", "depth", "IOPS", &series, XAxis::Log2).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 5_000, "a chart with text and lines");
        line_chart(&path, "CDF", "µs", "fraction", &series, XAxis::Log10).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rows_compute_per_io_figures() {
        let result = JobResult {
            spec_name: "randread-4k".into(),
            description: String::new(),
            connections: 2,
            depth: 32,
            rate: None,
            block_size: 4096,
            ios: 10_000,
            bytes: 10_000 * 4096,
            seconds: 10.0,
            latency: Default::default(),
            errors: 0,
            first_error: None,
            verify_failures: 0,
            first_verify_failure: None,
            generator_cpu_s: 0.2,
            wall_s: 11.0,
        };
        let m = Measured {
            target: "tandem".into(),
            result,
            target_cpu_s: 5.5,
            frames: Some((11_000, 11_000)),
        };
        // 1000 IOPS over 11 s: 11,000 I/Os.
        assert!((m.cpu_per_io_us() - 500.0).abs() < 1e-6);
        assert!((m.frames_per_io().unwrap() - 2.0).abs() < 1e-9);
        assert!((m.target_cpu_share() - 0.5).abs() < 1e-9);
        let table = render_jobs(&[m]);
        assert!(
            table.contains("| randread-4k | tandem | 2 × 32 | 1000 | 3.9 |"),
            "{table}"
        );
        assert!(
            ratio_row("x", 100.0, 160.0, "IOPS", Some((1.5, true)))
                .contains("| 1.60× | ≥ 1.5× | yes |")
        );
        assert!(ratio_row("x", 100.0, 90.0, "µs", Some((0.8, false))).contains("| no |"));
    }

    #[test]
    fn own_cpu_is_readable() {
        let pid = std::process::id() as i32;
        assert!(cpu_of(pid, true).is_some());
    }
}
