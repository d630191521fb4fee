//! `cargo tandem bench nvme` (the native load generator) against the booted
//! image, briefly: every job with verification through QEMU's port forward,
//! and the errors a user sees when the target is not there or refuses.
//! (The long side-by-side benchmark is tests/linux/bench.sh native.)

use std::time::{Duration, Instant};

use tandem_qemu::nvme_load::{self, JobSpec, Target};
use tandem_qemu::{Error, Node, TempDir, disk, free_port};
use tandem_tests::nvme::Queue;
use tandem_tests::{READY_TIMEOUT, tcg_vm, user_nic};

const NQN: &str = "nqn.2026-11.io.tandem:load-test";

#[test]
fn the_generator_loads_and_verifies_the_image() {
    let dir = TempDir::new("nvme-load").unwrap();
    let path = dir.path().join("disk0.img");
    disk::create_sparse(&path, 64 << 20).unwrap();
    let port = free_port().unwrap();
    let spec = tcg_vm("nvme-load", dir.path(), &format!("nqn={NQN}"))
        .disk(&path)
        .nic(0, user_nic(&[(port, 4420)]));
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    // QEMU's forward accepts before the image listens: wait for an ICResp.
    let deadline = Instant::now() + READY_TIMEOUT;
    while Queue::try_open(port, false, false).is_err() {
        assert!(Instant::now() < deadline, "no ICResp on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let target = Target::new("127.0.0.1", port, NQN);
    let mut log = Vec::new();
    for name in nvme_load::JOB_NAMES {
        let mut job = JobSpec::named(name, 2, 4).unwrap();
        job.runtime = Duration::from_secs(1);
        job.ramp = Duration::ZERO;
        job.verify = true;
        job.range = Some(16 << 20);
        let r = nvme_load::run_job(&target, &job, Some(&mut log))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", node.console_log()));
        assert!(r.ios > 0, "{name}: no I/O completed");
        assert!(
            r.ok(),
            "{name}: {:?} {:?}",
            r.first_error,
            r.first_verify_failure
        );
    }

    // A subsystem the image does not have.
    let wrong = Target::new("127.0.0.1", port, "nqn.2026-11.io.tandem:not-this-one");
    let job = JobSpec::named("qd1-randread-4k", 1, 1).unwrap();
    match nvme_load::run_job(&wrong, &job, None::<&mut Vec<u8>>) {
        Err(e @ Error::TargetRefused { .. }) => {
            assert!(e.to_string().contains("Connect"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // The image still serves the right one afterwards.
    let mut quick = JobSpec::named("qd1-randread-4k", 1, 1).unwrap();
    quick.runtime = Duration::from_millis(500);
    quick.ramp = Duration::ZERO;
    assert!(
        nvme_load::run_job(&target, &quick, None::<&mut Vec<u8>>)
            .unwrap()
            .ios
            > 0
    );
}

#[test]
fn nothing_listening_is_a_clean_error() {
    let port = free_port().unwrap();
    let target = Target::new("127.0.0.1", port, NQN);
    let job = JobSpec::named("randread-4k", 1, 1).unwrap();
    let e = nvme_load::run_job(&target, &job, None::<&mut Vec<u8>>).unwrap_err();
    assert!(matches!(e, Error::TargetUnreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}
