//! All paths down: what the stock Linux host's application sees when no
//! node of the pair can serve it, with `nvme connect`'s defaults and with
//! the settings `docs/host-tuning.md` recommends. The figures of that guide
//! come from this measurement (not a test: it asserts only that nothing
//! acknowledged is lost and that I/O comes back).
//!
//! One cluster ([`tandem_linux_guest::cluster`]); the host runs `ackcheck`
//! alone (4 KiB O_DIRECT writes and reads at queue depth 1, 150 a second,
//! each completion and each error logged with its time: an application
//! that goes on after an error). For each setting, the host reconnects both
//! paths with it, then two faults, each held `TANDEM_NOPATH_SECONDS`
//! (default 60) and then undone:
//!
//! 1. **fence**: the witness and the secondary killed: the primary has no
//!    majority and fences itself (ANA Inaccessible, its connections stay);
//!    then both restarted.
//! 2. **link**: both data nodes' host-path NICs down (the pair itself is
//!    healthy, no node can reach the host); then up again.
//!
//! For each: how long the application's I/O blocked, when it got its first
//! error (EIO) and how many, and how long after the fault was undone its
//! I/O completed again. The report goes to stderr and to
//! `target/linux-guest/runs/host-tuning.txt` (with the host's settings as
//! sysfs shows them and the kernel's nvme lines).
//!
//! `cargo test -p tandem-linux-guest --test host_tuning -- --ignored --nocapture`
//! (`TANDEM_LINUX_GUEST=debian13` for the Linux 6.12 host). Needs root;
//! about 12 min under TCG.

use std::time::Duration;

use tandem_linux_guest::Release;
use tandem_linux_guest::cluster::{CK_OFFSET, Cluster, Name, ROLE_TIMEOUT, epoch_ms, lock};
use tandem_linux_guest::image::guest_dir;

/// The options `docs/host-tuning.md` recommends (its reasons are there):
/// nvme-cli 2.13 (Debian 13) takes `--fast_io_fail_tmo`; nvme-cli 2.4
/// (Debian 12) has no option for it, so it is written to the controllers'
/// sysfs attribute after connecting (the host script's `sysfs:` words).
fn recommended(release: Release) -> &'static str {
    match release {
        Release::Debian13 => "--reconnect-delay=1 --ctrl-loss-tmo=-1 --fast_io_fail_tmo=30",
        _ => "--reconnect-delay=1 --ctrl-loss-tmo=-1 sysfs:fast_io_fail_tmo=30",
    }
}

/// One line of the checker's log: (time in ms on the guest's clock, ok).
fn completions(log: &str) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = log
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ok = match w.next()? {
                "W" | "R" => true,
                "WERR" | "RERR" => false,
                _ => return None,
            };
            Some((w.next()?.parse().ok()?, ok))
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

/// What the application saw around one fault (all times on the guest's
/// clock, ms).
#[derive(Debug, Default)]
struct Seen {
    /// Last completion without error before the I/O stopped.
    last_ok: Option<u64>,
    /// First error after the fault.
    first_error: Option<u64>,
    /// Errors between the fault and the first completion after the restore.
    errors: usize,
    /// First completion without error after the fault was undone.
    resumed: Option<u64>,
}

fn seen(log: &[(u64, bool)], fault: u64, restored: u64) -> Seen {
    let resumed = log
        .iter()
        .find(|(t, ok)| *ok && *t >= restored)
        .map(|(t, _)| *t);
    let end = resumed.unwrap_or(u64::MAX);
    let first_error = log
        .iter()
        .find(|(t, ok)| !*ok && *t >= fault && *t < end)
        .map(|(t, _)| *t);
    let stop = first_error.unwrap_or(end);
    let last_ok = log
        .iter()
        .rev()
        .find(|(t, ok)| *ok && *t < stop && *t + 5000 >= fault)
        .map(|(t, _)| *t);
    let errors = log
        .iter()
        .filter(|(t, ok)| !*ok && *t >= fault && *t < end)
        .count();
    Seen {
        last_ok,
        first_error,
        errors,
        resumed,
    }
}

fn secs(from: Option<u64>, to: Option<u64>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!("{:.1} s", (b as f64 - a as f64) / 1000.0),
        _ => "—".into(),
    }
}

struct Fault {
    setting: &'static str,
    kind: &'static str,
    /// Host times (ms since the epoch): the fault, the start of its undoing,
    /// the moment it was undone (nodes ready, links up).
    at: u64,
    undo_started: u64,
    undone: u64,
}

#[test]
#[ignore = "measurement for docs/host-tuning.md (~12 min): run with --ignored"]
fn all_paths_down() {
    let Some(_guard) = lock() else { return };
    let hold_secs: u64 = std::env::var("TANDEM_NOPATH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let hold = Duration::from_secs(hold_secs);
    let mut c = Cluster::start("nopath");
    c.measure_clock();
    let mut faults = Vec::new();
    let mut notes = Vec::new();
    let recommended = recommended(Release::from_env());
    for (run, (setting, opts)) in [("nvme connect defaults", ""), ("recommended", recommended)]
        .into_iter()
        .enumerate()
    {
        c.event(&format!("reconnect with {setting}"));
        let out = c.host_ok(&format!("reconnect {opts}"), Duration::from_secs(180));
        notes.push(format!("## {setting}: `nvme connect {opts}`\n{out}"));
        notes.push(c.host_ok("settings", Duration::from_secs(30)));
        // Each run on blocks of its own: a write that fails leaves the
        // block as an earlier run wrote it, which this run's checker would
        // take for a corrupt block.
        let offset = CK_OFFSET + run as u64 * (16 << 20);
        c.host_ok(&format!("start-ck {offset}"), Duration::from_secs(60));
        c.hold();

        // 1. The witness and the secondary lost: the primary fences itself.
        let primary = c.serving();
        let secondary = primary.peer();
        c.wait_in_sync(primary, Duration::from_secs(180));
        let since = c.role_count(primary);
        c.event(&format!(
            "{setting}: fence (kill the witness and {})",
            secondary.as_str()
        ));
        let at = epoch_ms();
        c.kill(Name::Witness);
        c.kill(secondary);
        c.wait_role(primary, "fenced", since, ROLE_TIMEOUT);
        std::thread::sleep(hold.saturating_sub(Duration::from_millis(epoch_ms() - at)));
        c.event(&format!(
            "{setting}: restart the witness and {}",
            secondary.as_str()
        ));
        let undo_started = epoch_ms();
        c.restart(Name::Witness);
        c.restart(secondary);
        let undone = epoch_ms();
        c.wait_io_flows(undone, Duration::from_secs(180));
        faults.push(Fault {
            setting,
            kind: "fence: witness and secondary lost",
            at,
            undo_started,
            undone,
        });
        let serving = c.serving();
        c.wait_in_sync(serving, Duration::from_secs(180));
        c.hold();

        // 2. Both nodes' host paths down: the pair is fine, no node reaches
        // the host.
        c.event(&format!("{setting}: both host paths down"));
        let at = epoch_ms();
        c.set_link(Name::A, 2, false);
        c.set_link(Name::B, 2, false);
        std::thread::sleep(hold);
        c.event(&format!("{setting}: both host paths up"));
        let undo_started = epoch_ms();
        c.set_link(Name::A, 2, true);
        c.set_link(Name::B, 2, true);
        let undone = epoch_ms();
        c.wait_io_flows(undone, Duration::from_secs(180));
        faults.push(Fault {
            setting,
            kind: "link: both nodes' host paths down",
            at,
            undo_started,
            undone,
        });
        c.hold();
        notes.push(c.host_ok("paths", Duration::from_secs(30)));
        // Nothing acknowledged lost, nothing stale (errors are allowed: the
        // application was told).
        notes.push(c.stop_io());
        let log =
            std::fs::read_to_string(c.host.share_dir().join("ackcheck.log")).unwrap_or_default();
        let _ = std::fs::write(
            guest_dir().join("runs").join(format!(
                "host-tuning-{}.ackcheck.log",
                setting.replace(' ', "-")
            )),
            &log,
        );
        let log = completions(&log);
        for f in faults.iter_mut().filter(|f| f.setting == setting) {
            f.at = c.on_guest(f.at);
            f.undo_started = c.on_guest(f.undo_started);
            f.undone = c.on_guest(f.undone);
        }
        notes.push(format!(
            "checker log: {} completions, {} errors",
            log.iter().filter(|(_, ok)| *ok).count(),
            log.iter().filter(|(_, ok)| !*ok).count()
        ));
        notes.push(c.host_ok("dmesg", Duration::from_secs(30)));
        let rows: Vec<String> = faults
            .iter()
            .filter(|f| f.setting == setting)
            .map(|f| {
                let s = seen(&log, f.at, f.undone);
                let wait_for_undo = secs(Some(f.at), Some(f.undo_started));
                format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    f.setting,
                    f.kind,
                    wait_for_undo,
                    secs(s.last_ok, s.first_error),
                    s.errors,
                    secs(Some(f.undo_started), Some(f.undone)),
                    secs(Some(f.undone), s.resumed),
                    secs(s.last_ok, s.resumed),
                )
            })
            .collect();
        notes.push(rows.join("\n"));
        std::fs::remove_file(c.host.share_dir().join("ackcheck.log")).ok();
    }
    c.check_no_split_brain();
    let mut table = vec![
        "| host setting | fault | fault held | last completion → first EIO | EIOs | undoing took | undone → I/O back | I/O stopped in all |".to_string(),
        "|---|---|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    for note in &notes {
        if note.starts_with("| ") {
            table.push(note.clone());
        }
    }
    let text = format!(
        "{}\n\nrole changes:\n{}\n{}",
        table.join("\n"),
        c.role_report(),
        notes.join("\n\n")
    );
    eprintln!("{text}");
    let _ = std::fs::write(guest_dir().join("runs").join("host-tuning.txt"), &text);
    let (_, output) = c.host_command("exit", Duration::from_secs(30));
    assert!(output.contains("=== PASS"), "host script: {output}");
}

#[test]
fn what_the_application_saw_is_read_from_the_checker_log() {
    let log = completions(
        "W 1000 1 1\nR 1100 2 1\nW 1200 3 1\nWERR 9000 4 2 Input/output error\n\
         RERR 9001 2 Input/output error\nWERR 12000 4 3 Input/output error\n\
         W 15000 4 4\nSTOP 16000\n",
    );
    let s = seen(&log, 1150, 14000);
    assert_eq!(s.last_ok, Some(1200));
    assert_eq!(s.first_error, Some(9000));
    assert_eq!(s.errors, 3);
    assert_eq!(s.resumed, Some(15000));
    // Blocked, no error: the last completion before the restore.
    let log = completions("W 1000 1 1\nW 1200 3 1\nW 20000 4 4\n");
    let s = seen(&log, 1100, 19000);
    assert_eq!((s.last_ok, s.first_error, s.errors), (Some(1200), None, 0));
    assert_eq!(secs(s.last_ok, s.resumed), "18.8 s");
}
