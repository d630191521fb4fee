//! The HA pair against the stock Linux NVMe/TCP host (Debian 6.1 kernel,
//! native NVMe multipath), with fio and ackcheck running while the tests
//! inject faults: planned switchovers, kills, isolation, pauses, the witness
//! down. The cluster, its segments and the closing checks are
//! [`tandem_linux_guest::cluster`].
//!
//! Needs root (namespace, taps) and QEMU; skipped with a notice without
//! root. The tests take turns (one lock): the five take 6–9 minutes under
//! TCG on two busy cores.

use std::path::Path;
use std::time::{Duration, Instant};

use tandem_linux_guest::cluster;
use tandem_linux_guest::cluster::{
    Cluster, DEFAULT_TIMING, DISK_BYTES, HOLD, Name, REGION_BYTES, ROLE_TIMEOUT, epoch_ms, lock,
    own_line, role_lines,
};

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
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("discards="))
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| c.fail("disk counters", &status));
        assert!(
            discards >= 1,
            "{} discarded nothing:\n{status}",
            name.as_str()
        );
    }
    c.check_no_split_brain();
    let (_, output) = c.host_command("exit", Duration::from_secs(30));
    assert!(output.contains("=== PASS"), "host script: {output}");
    for name in [Name::A, Name::B, Name::Witness] {
        let log = c.member(name).log();
        assert!(
            !log.contains("tandem: panic"),
            "{} panicked:\n{log}",
            name.as_str()
        );
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
    let mut c = Cluster::start_with_timing("stalls", DEFAULT_TIMING);
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
        let (fm, fx) = cluster::median_max(&fio);
        let (cm, cx) = cluster::median_max(&ck);
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

/// The lines of both data nodes' `status` that tell where a replicated
/// write's time goes: write and apply times (cumulative since the stream
/// connected), wake-ups per IRQ line, NIC and disk counters.
fn print_node_figures(c: &mut Cluster, primary: Name, prefix: &str) {
    for node in [primary, primary.peer()] {
        for line in c.status(node).lines() {
            let line = line.trim();
            let wanted = [
                "uptime",
                "loop-time",
                "write-time",
                "apply-time",
                "payload-copies",
                "stream-mac",
                "wakeups",
                "net",
                "reads=",
            ];
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
    let mut c = Cluster::start_with_timing("replication", DEFAULT_TIMING);
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
                let result =
                    tandem_linux_guest::fio::parse(&job, &out).unwrap_or_else(|e| c.fail("fio", e));
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
