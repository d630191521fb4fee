//! The stock Linux NVMe/TCP host (Debian 6.1 kernel: nvme-tcp, nvme-cli, fio,
//! mkfs.ext4) against the booted tandem image, both on one bridge segment in
//! a fresh network namespace:
//!
//! - `nvme discover` on port 8009 lists the subsystem on 4420;
//! - `nvme connect -i 2 --hdr-digest --data-digest`: admin + 2 I/O queues,
//!   digests on (seen from both sides: sysfs and tandem's `nvme` command);
//!   `nvme list`, `id-ctrl`, `id-ns`, `ana-log` show the configured identity,
//!   the multipath/ANA fields and an optimized group;
//! - fio verify: 4 KiB and 128 KiB random writes at QD32 with crc32c, read
//!   back in a second pass;
//! - mkfs.ext4, mount, files written, unmount, `nvme disconnect` (tandem
//!   drops the controller);
//! - the appliance reboots (console `reboot`, next ready line);
//! - discover again, `nvme connect -i 2` without digests, the files are
//!   intact, fio verify again, `nvme disconnect`.
//!
//! One Linux guest boot and one tandem boot (plus its reboot) for all of it:
//! 60–105 s under TCG on a two-core machine.
//!
//! `linux_host_against_tandem_with_4k_blocks`: tandem with `lba=4096`; the
//! host sees 4096-byte logical blocks and passes the smoke script (discover,
//! connect, inspect, fio verify, ext4 remount, disconnect). ~45 s. Needs root (network namespace,
//! taps) and QEMU; builds the Linux guest (`tests/linux/build-guest.sh`,
//! Debian packages) and the tandem image on first use. Without root it is
//! skipped with a notice. `TANDEM_LOG=debug` boots tandem with `log=debug`
//! (its console log stays in target/linux-guest/runs/).

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_linux_guest::image::guest_dir;
use tandem_linux_guest::scenario::{
    GuestShape, INITIATOR_APPLIANCE_SCRIPT, Rig, Segment, create_disk,
};
use tandem_linux_guest::tandem::{TANDEM_NQN, TANDEM_SERIAL, TandemTarget};
use tandem_linux_guest::{GuestImage, RunningGuest};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5e1f2d3c-4b5a-4697-8a7b-6c5d4e3f2a10";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Two TCG VMs per test are all two cores carry: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with the error, the Linux guest's console tail and tandem's.
fn fail(
    what: &str,
    error: impl std::fmt::Display,
    guest: &RunningGuest,
    tandem: &TandemTarget,
) -> ! {
    panic!(
        "{what}: {error}\n--- Linux host console (tail):\n{}\n--- tandem console (tail):\n{}",
        guest.console_tail(30),
        tandem.console_tail(60)
    )
}

/// The `connection …` lines of tandem's `nvme` command.
fn connections(nvme: &[String]) -> Vec<&String> {
    nvme.iter()
        .filter(|l| l.trim_start().starts_with("connection "))
        .collect()
}

fn controllers(nvme: &[String]) -> Vec<&String> {
    nvme.iter()
        .filter(|l| l.trim_start().starts_with("controller "))
        .collect()
}

/// What tandem shows while the host is connected: one controller for our
/// host, and admin + 2 I/O queue connections with the given digests.
fn check_connected(nvme: &[String], digests: bool) {
    let text = nvme.join("\n");
    let ctrls = controllers(nvme);
    assert_eq!(ctrls.len(), 1, "one controller:\n{text}");
    assert!(
        ctrls[0].contains(&format!(" Nvm host {HOST_NQN} ")),
        "an I/O controller for our host:\n{text}"
    );
    let conns = connections(nvme);
    assert_eq!(conns.len(), 3, "admin + 2 I/O queues:\n{text}");
    let digest_words = if digests {
        "hdgst=true ddgst=true"
    } else {
        "hdgst=false ddgst=false"
    };
    for qid in 0..3 {
        assert!(
            conns
                .iter()
                .any(|c| c.contains(&format!("qid=Some({qid})")) && c.contains(digest_words)),
            "queue {qid} with {digest_words}:\n{text}"
        );
    }
}

#[test]
fn linux_host_against_tandem() {
    if !is_root() {
        eprintln!(
            "\n!!! SKIPPED linux_host_against_tandem: needs root (network namespace, taps)\n"
        );
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("{e}"));
    let mut rig = Rig::with_segment("tdm", Segment::Bridge).unwrap_or_else(|e| panic!("{e}"));
    let disk = guest_dir().join("runs").join("tdm-disk.raw");
    create_disk(&disk, 256 << 20).unwrap();
    let log = std::env::var("TANDEM_LOG")
        .map(|l| format!("log={l}"))
        .unwrap_or_default();
    let mut tandem = rig
        .start_tandem(
            &disk,
            GuestShape {
                vcpus: 1,
                memory_mib: 256,
            },
            &log,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let host = rig
        .guest(
            "host",
            INITIATOR_APPLIANCE_SCRIPT,
            // A Linux host makes at most one I/O queue per CPU: -i 2 needs 2.
            GuestShape {
                vcpus: 2,
                memory_mib: 1024,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .kernel_arg(&format!("tg.hostnqn={HOST_NQN}"))
        // Fail fast rather than retry for minutes if tandem stops answering.
        .kernel_arg("nvme_core.io_timeout=30")
        .env("TARGET_ADDR", tandem.endpoint.address)
        .env("TARGET_PORT", tandem.endpoint.port)
        .env("DISCOVERY_PORT", tandem.discovery_port)
        .env("SUBNQN", TANDEM_NQN)
        .env("SERIAL", TANDEM_SERIAL)
        .timeout(Duration::from_secs(420));
    // Both boot at once; the host retries discovery until tandem listens.
    let mut guest = tandem_linux_guest::spawn(&image, &host).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = tandem.wait_ready(READY_TIMEOUT) {
        fail("tandem did not get ready", e, &guest, &tandem);
    }

    // Connected with digests and 2 I/O queues.
    if let Err(e) = guest.wait_for_mark("connected-digests", Duration::from_secs(180)) {
        fail("the host did not connect with digests", e, &guest, &tandem);
    }
    let nvme = tandem
        .command("nvme")
        .unwrap_or_else(|e| fail("console", e, &guest, &tandem));
    check_connected(&nvme, true);
    guest.signal("inspected-digests").unwrap();

    // fio verify, ext4, disconnect.
    if let Err(e) = guest.wait_for_mark("disconnected-digests", Duration::from_secs(240)) {
        fail("fio/ext4/disconnect with digests", e, &guest, &tandem);
    }
    // The host closes its queues right after the disconnect: tandem drops
    // the controller and its connections once it has seen them close.
    let deadline = Instant::now() + Duration::from_secs(15);
    let nvme = loop {
        let nvme = tandem
            .command("nvme")
            .unwrap_or_else(|e| fail("console", e, &guest, &tandem));
        if controllers(&nvme).is_empty() && connections(&nvme).is_empty() {
            break nvme;
        }
        if Instant::now() > deadline {
            panic!(
                "tandem still holds the disconnected host:\n{}",
                nvme.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let totals = nvme.last().cloned().unwrap_or_default();
    assert!(
        !totals.contains("writes=0 ") && !totals.contains("reads=0 "),
        "the host's I/O is counted: {totals}"
    );

    // Reboot the appliance; the files must survive it.
    if let Err(e) = tandem.reboot(READY_TIMEOUT) {
        fail("tandem did not come back after reboot", e, &guest, &tandem);
    }
    assert_eq!(
        tandem.console_log().matches("tandem: ready ").count(),
        2,
        "one ready line per boot"
    );
    guest.signal("appliance-rebooted").unwrap();
    if let Err(e) = guest.wait_for_mark("connected-plain", Duration::from_secs(120)) {
        fail(
            "the host did not reconnect after the reboot",
            e,
            &guest,
            &tandem,
        );
    }
    let nvme = tandem
        .command("nvme")
        .unwrap_or_else(|e| fail("console", e, &guest, &tandem));
    check_connected(&nvme, false);
    guest.signal("inspected-plain").unwrap();

    let outcome = guest.wait().unwrap_or_else(|e| {
        panic!(
            "{e}\n--- tandem console (tail):\n{}",
            tandem.console_tail(60)
        )
    });
    if let Err(e) = outcome.check() {
        panic!(
            "{e}\n--- tandem console (tail):\n{}",
            tandem.console_tail(60)
        );
    }
    let log = tandem.console_log();
    tandem
        .stop(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&disk);

    let out = &outcome.output;
    for expected in [
        "subtype: nvme subsystem",
        &format!("subnqn:  {TANDEM_NQN}"),
        "trsvcid: 4420",
        TANDEM_SERIAL,
        "state=live",
        "queue_count=3",
        "optimized",
        "fio verify-4k verified",
        "fio verify-128k verified",
        "files intact",
        "fio plain-4k verified",
        "fio plain-128k verified",
        "disconnected 1 controller",
        "=== PASS",
    ] {
        assert!(
            out.contains(expected),
            "host output lacks {expected:?}:\n{out}"
        );
    }
    assert!(!log.contains("tandem: panic"), "{log}");
    eprintln!(
        "linux_host_against_tandem: host guest {:.1} s, whole test {:.1} s",
        outcome.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn linux_host_against_tandem_with_4k_blocks() {
    if !is_root() {
        eprintln!(
            "\n!!! SKIPPED linux_host_against_tandem_with_4k_blocks: needs root (network namespace, taps)\n"
        );
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("{e}"));
    let mut rig = Rig::with_segment("tdm4k", Segment::Bridge).unwrap_or_else(|e| panic!("{e}"));
    let disk = guest_dir().join("runs").join("tdm4k-disk.raw");
    create_disk(&disk, 128 << 20).unwrap();
    let log = std::env::var("TANDEM_LOG")
        .map(|l| format!(" log={l}"))
        .unwrap_or_default();
    let mut tandem = rig
        .start_tandem(
            &disk,
            GuestShape {
                vcpus: 1,
                memory_mib: 256,
            },
            &format!("lba=4096{log}"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = tandem.endpoint.clone();
    let host = rig
        .smoke_initiator(&endpoint, "", GuestShape::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .env("DISCOVERY_PORT", tandem.discovery_port)
        .env("VERIFY_SIZE", "16M")
        .kernel_arg("nvme_core.io_timeout=30")
        .timeout(Duration::from_secs(300));
    let guest = tandem_linux_guest::spawn(&image, &host).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = tandem.wait_ready(READY_TIMEOUT) {
        fail("tandem did not get ready", e, &guest, &tandem);
    }
    let outcome = guest.wait().unwrap_or_else(|e| {
        panic!(
            "{e}\n--- tandem console (tail):\n{}",
            tandem.console_tail(60)
        )
    });
    if let Err(e) = outcome.check() {
        panic!(
            "{e}\n--- tandem console (tail):\n{}",
            tandem.console_tail(60)
        );
    }
    let nvme = tandem.command("nvme").unwrap_or_default().join("\n");
    tandem
        .stop(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&disk);

    assert!(nvme.contains("lba=4096"), "{nvme}");
    let out = &outcome.output;
    // 128 MiB in 4096-byte blocks (in 512-byte blocks it would be 0x40000).
    for expected in [
        "nsze    : 0x8000\n",
        "err= 0",
        "ext4 ok",
        "disconnected 1 controller",
        "=== PASS",
    ] {
        assert!(
            out.contains(expected),
            "host output lacks {expected:?}:\n{out}"
        );
    }
    eprintln!(
        "linux_host_against_tandem_with_4k_blocks: whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
