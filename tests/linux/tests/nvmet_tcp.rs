//! The harness end to end: Linux's nvmet-tcp target in one guest (virtio-blk
//! disk, configfs, port 4420, ANA group 1 optimized), the stock Linux host in
//! another, on a segment inside a fresh network namespace: discover, connect,
//! id-ctrl/id-ns/ana-log, fio verify (write, then read back), disconnect.
//!
//! Boots two TCG guests (~40 s on a 2-core machine, plus ~25 s to build the
//! guest the first time, plus downloads): ignored by default. Run with
//! `cargo test -p tandem-linux-guest -- --ignored`. Needs root (network
//! namespace) and qemu-system-x86_64 (tests/linux/setup-host.sh).

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_linux_guest::scenario::{GuestShape, Rig, Segment, create_disk};
use tandem_linux_guest::{GuestImage, image::guest_dir};

/// Two TCG guests per test are all two cores carry: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn linux_host_against_nvmet(
    label: &str,
    segment: Segment,
    connect_opts: &str,
    initiator_vcpus: u32,
    expect: &[&str],
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("{e}"));
    let mut rig = Rig::with_segment(label, segment).unwrap_or_else(|e| panic!("{e}"));
    let disk = guest_dir().join("runs").join(format!("{label}-disk.raw"));
    create_disk(&disk, 256 << 20).unwrap();
    let shape = GuestShape::default();
    let mut target = rig
        .start_nvmet(&image, &disk, 4420, shape, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    // Boot both at once; the initiator retries discovery until the target
    // listens. A target that fails to come up fails the test at once.
    let initiator_shape = GuestShape {
        vcpus: initiator_vcpus,
        ..shape
    };
    let initiator = rig
        .smoke_initiator(&target.endpoint, connect_opts, initiator_shape)
        .unwrap_or_else(|e| panic!("{e}"));
    let initiator = tandem_linux_guest::spawn(&image, &initiator).unwrap_or_else(|e| panic!("{e}"));
    target
        .wait_ready(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = initiator.wait();
    let target_outcome = target.stop().unwrap_or_else(|e| panic!("{e}"));
    let outcome = outcome.unwrap_or_else(|e| panic!("{e}"));
    outcome.check().unwrap_or_else(|e| panic!("{e}"));
    target_outcome.check().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&disk);

    let out = &outcome.output;
    for expected in [
        "subtype: nvme subsystem",
        "subnqn:  nqn.2026-11.io.tandem.test:nvmet-ref",
        "nvmetref0001",
        "state=live",
        "optimized",
        "err= 0",
        "ext4 ok",
        "disconnected 1 controller",
        "=== PASS",
    ]
    .iter()
    .chain(expect)
    {
        assert!(
            out.contains(expected),
            "initiator output lacks {expected:?}:\n{out}"
        );
    }
    assert!(
        target_outcome.output.contains("nvmet: stop signal"),
        "{}",
        target_outcome.output
    );
    eprintln!(
        "{label}: initiator guest {:.1} s, whole test {:.1} s",
        outcome.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "boots two TCG guests (~40 s); run with --ignored"]
fn linux_host_against_linux_nvmet_tcp() {
    // QEMU socket multicast segment.
    linux_host_against_nvmet("nvmet-smoke", Segment::Mcast, "", 1, &["queue_count=2"]);
}

#[test]
#[ignore = "boots two TCG guests (~40 s); run with --ignored"]
fn linux_host_against_linux_nvmet_tcp_with_digests_and_two_queues() {
    // Admin queue + 2 I/O queues (the host makes at most one per CPU).
    // Taps on a bridge.
    linux_host_against_nvmet(
        "nvmet-digest",
        Segment::Bridge,
        "-i 2 --hdr-digest --data-digest",
        2,
        &["queue_count=3"],
    );
}
