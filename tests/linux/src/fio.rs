//! fio jobs of the benchmark, their JSON results, and the Markdown table.

use crate::error::{Error, Result};
use std::fmt::Write as _;

/// One fio job run from the Linux guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FioJob {
    /// File-name safe: results land in `fio-<name>.json`.
    pub name: &'static str,
    /// fio's `rw=`.
    pub rw: &'static str,
    pub block_size: &'static str,
    pub iodepth: u32,
}

impl FioJob {
    /// `name:rw:bs:iodepth`, as the guest script reads it.
    pub fn spec(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.name, self.rw, self.block_size, self.iodepth
        )
    }
    /// Is this job measured in IOPS (small blocks) rather than MiB/s?
    pub fn is_small_block(&self) -> bool {
        self.block_size == "4k"
    }
}

/// The benchmark of issue 3: writes first, so the reads hit written blocks.
pub const BENCH_JOBS: [FioJob; 5] = [
    FioJob {
        name: "randwrite-4k-qd32",
        rw: "randwrite",
        block_size: "4k",
        iodepth: 32,
    },
    FioJob {
        name: "write-128k-qd32",
        rw: "write",
        block_size: "128k",
        iodepth: 32,
    },
    FioJob {
        name: "randread-4k-qd32",
        rw: "randread",
        block_size: "4k",
        iodepth: 32,
    },
    FioJob {
        name: "randread-4k-qd1",
        rw: "randread",
        block_size: "4k",
        iodepth: 1,
    },
    FioJob {
        name: "read-128k-qd32",
        rw: "read",
        block_size: "128k",
        iodepth: 32,
    },
];

/// `FIO_JOBS` for the guest script.
pub fn jobs_env(jobs: &[FioJob]) -> String {
    jobs.iter().map(FioJob::spec).collect::<Vec<_>>().join(" ")
}

/// The figures of one job (its read or its write side, whichever ran).
#[derive(Debug, Clone, PartialEq)]
pub struct FioResult {
    pub job: String,
    pub iops: f64,
    pub mib_per_s: f64,
    /// Completion latency percentiles and mean, in microseconds.
    pub clat_p50_us: f64,
    pub clat_p99_us: f64,
    pub clat_mean_us: f64,
    /// The initiator's CPU time in the job (user + system, percent of one
    /// vCPU): near 100 the initiator, not the target, bounds the figure.
    pub host_cpu_percent: f64,
    /// I/Os the job completed after its ramp-up.
    pub ios: u64,
}

/// Parses fio's `--output-format=json` output for job `job`.
pub fn parse(job: &str, json: &str) -> Result<FioResult> {
    let err = |reason: String| Error::Fio {
        job: job.to_string(),
        reason,
    };
    // fio may print notes before the JSON object.
    let start = json
        .find('{')
        .ok_or_else(|| err("no JSON object in the output".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(&json[start..]).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let j = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or_else(|| err("no jobs[0]".into()))?;
    if let Some(e) = j.get("error").and_then(|e| e.as_i64()).filter(|&e| e != 0) {
        return Err(err(format!("fio reported error {e}")));
    }
    let side = ["read", "write"]
        .iter()
        .filter_map(|s| j.get(*s))
        .find(|s| s.get("io_bytes").and_then(|b| b.as_u64()).unwrap_or(0) > 0)
        .ok_or_else(|| err("neither read nor write moved any bytes".into()))?;
    let num = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_f64()).unwrap_or(0.0);
    let clat = side.get("clat_ns");
    let pct = |p: &str| {
        num(clat
            .and_then(|c| c.get("percentile"))
            .and_then(|p2| p2.get(p)))
            / 1000.0
    };
    Ok(FioResult {
        job: job.to_string(),
        iops: num(side.get("iops")),
        // fio's "bw" is KiB/s.
        mib_per_s: num(side.get("bw")) / 1024.0,
        clat_p50_us: pct("50.000000"),
        clat_p99_us: pct("99.000000"),
        clat_mean_us: num(clat.and_then(|c| c.get("mean"))) / 1000.0,
        host_cpu_percent: num(j.get("usr_cpu")) + num(j.get("sys_cpu")),
        ios: ["read", "write"]
            .iter()
            .filter_map(|s| j.get(*s)?.get("total_ios")?.as_u64())
            .sum(),
    })
}

/// Markdown rows for one target's results: job, IOPS, MiB/s, p50, p99.
pub fn render_table(results: &[FioResult]) -> String {
    let mut s = String::from(
        "| fio job | IOPS | MiB/s | clat p50 (µs) | clat p99 (µs) | initiator CPU |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} % |",
            r.job, r.iops, r.mib_per_s, r.clat_p50_us, r.clat_p99_us, r.host_cpu_percent
        );
    }
    s
}

/// Markdown comparison of a candidate (tandem) with the reference (nvmet-tcp)
/// from the same run: the ratio is IOPS (4 KiB), MiB/s (128 KiB) or, for the
/// QD1 job, p50 and p99 latency candidate/reference (lower is better), each
/// with issue 3's goal for it.
pub fn render_comparison(
    reference: &[FioResult],
    candidate: &[FioResult],
    jobs: &[FioJob],
) -> String {
    let mut s = String::from(
        "| fio job | nvmet-tcp | tandem | tandem / nvmet-tcp | goal | met |\n|---|---:|---:|---:|---:|:---:|\n",
    );
    for job in jobs {
        let (Some(r), Some(c)) = (
            reference.iter().find(|r| r.job == job.name),
            candidate.iter().find(|r| r.job == job.name),
        ) else {
            continue;
        };
        // (label, reference, candidate, unit, goal on the ratio: at least / at most)
        let rows: Vec<(String, f64, f64, &str, Goal)> = if job.iodepth == 1 {
            vec![
                (
                    format!("{} p50", job.name),
                    r.clat_p50_us,
                    c.clat_p50_us,
                    "µs",
                    Goal::AtMost(0.8),
                ),
                (
                    format!("{} p99", job.name),
                    r.clat_p99_us,
                    c.clat_p99_us,
                    "µs",
                    Goal::AtMost(0.8),
                ),
            ]
        } else if job.is_small_block() {
            vec![(
                job.name.to_string(),
                r.iops,
                c.iops,
                "IOPS",
                Goal::AtLeast(1.5),
            )]
        } else {
            vec![(
                job.name.to_string(),
                r.mib_per_s,
                c.mib_per_s,
                "MiB/s",
                Goal::AtLeast(1.0),
            )]
        };
        for (label, rv, cv, unit, goal) in rows {
            let (ratio, met) = if rv > 0.0 {
                let ratio = cv / rv;
                (
                    format!("{ratio:.2}×"),
                    if goal.met(ratio) { "yes" } else { "no" },
                )
            } else {
                ("–".into(), "–")
            };
            let _ = writeln!(
                s,
                "| {label} | {rv:.0} {unit} | {cv:.0} {unit} | {ratio} | {goal} | {met} |"
            );
        }
    }
    s
}

/// The goal of issue 3 for a tandem / nvmet-tcp ratio.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(g) => ratio >= g,
            Goal::AtMost(g) => ratio <= g,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtLeast(g) => write!(f, "≥ {g:.1}×"),
            Goal::AtMost(g) => write!(f, "≤ {g:.1}×"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "randread-4k-qd1",
      "error" : 0,
      "read" : {
        "io_bytes" : 40960000, "bw" : 4000, "iops" : 1000.5, "total_ios" : 10000,
        "clat_ns" : { "mean" : 950000.0,
          "percentile" : { "50.000000" : 900000, "99.000000" : 2000000 } }
      },
      "write" : { "io_bytes" : 0, "bw" : 0, "iops" : 0.0 },
      "usr_cpu" : 12.5, "sys_cpu" : 70.25
    }
  ]
}"#;

    #[test]
    fn parses_the_side_that_moved_bytes() {
        let r = parse("randread-4k-qd1", SAMPLE).unwrap();
        assert_eq!(r.iops, 1000.5);
        assert!((r.mib_per_s - 3.90625).abs() < 1e-9);
        assert_eq!(r.clat_p50_us, 900.0);
        assert_eq!(r.clat_p99_us, 2000.0);
        assert_eq!(r.clat_mean_us, 950.0);
        assert_eq!(r.host_cpu_percent, 82.75);
        assert_eq!(r.ios, 10000);
    }

    #[test]
    fn rejects_errors_and_garbage() {
        assert!(parse("x", "no json here").is_err());
        assert!(parse("x", "{\"jobs\":[]}").is_err());
        assert!(parse("x", "{\"jobs\":[{\"error\":5,\"read\":{\"io_bytes\":1}}]}").is_err());
        assert!(
            parse(
                "x",
                "{\"jobs\":[{\"read\":{\"io_bytes\":0},\"write\":{\"io_bytes\":0}}]}"
            )
            .is_err()
        );
    }

    #[test]
    fn job_specs_and_comparison() {
        assert_eq!(BENCH_JOBS[0].spec(), "randwrite-4k-qd32:randwrite:4k:32");
        assert_eq!(
            jobs_env(&BENCH_JOBS[..2]),
            "randwrite-4k-qd32:randwrite:4k:32 write-128k-qd32:write:128k:32"
        );
        let mk = |job: &str, iops: f64, mib: f64, p50: f64| FioResult {
            job: job.into(),
            iops,
            mib_per_s: mib,
            clat_p50_us: p50,
            clat_p99_us: 0.0,
            clat_mean_us: 0.0,
            host_cpu_percent: 0.0,
            ios: 0,
        };
        let r = [
            mk("randread-4k-qd32", 1000.0, 4.0, 0.0),
            mk("randread-4k-qd1", 0.0, 0.0, 800.0),
        ];
        let c = [
            mk("randread-4k-qd32", 1500.0, 6.0, 0.0),
            mk("randread-4k-qd1", 0.0, 0.0, 400.0),
        ];
        let t = render_comparison(&r, &c, &BENCH_JOBS);
        assert!(
            t.contains("| randread-4k-qd32 | 1000 IOPS | 1500 IOPS | 1.50× | ≥ 1.5× | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| randread-4k-qd1 p50 | 800 µs | 400 µs | 0.50× | ≤ 0.8× | yes |"),
            "{t}"
        );
        assert!(
            render_table(&r).contains("| randread-4k-qd32 | 1000 | 3.9 |")
                || render_table(&r).contains("| randread-4k-qd32 | 1000 | 4.0 |")
        );
    }
}
