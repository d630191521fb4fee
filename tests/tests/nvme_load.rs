//! `cargo tandem bench nvme` (the native load generator) against the booted
//! image, briefly: every job with verification through QEMU's port forward,
//! and the errors a user sees when the target is not there or refuses.
//! (The long side-by-side benchmark is tests/linux/bench.sh native.)

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tandem_qemu::nvme_load::{self, JobResult, JobSpec, Target};
use tandem_qemu::{Error, Node, TempDir, disk, free_port};
use tandem_tests::nvme::Queue;
use tandem_tests::{COMMAND_TIMEOUT, READY_TIMEOUT, tcg_vm, user_nic};

const NQN: &str = "nqn.2026-11.io.tandem:load-test";
/// A job still running this long after its runtime is overdue: the image's
/// own account of it is taken then, while it is stuck.
const OVERDUE: Duration = Duration::from_secs(5);

/// What the image says about itself (its connections, NICs, disks and
/// wake-ups, twice a second apart, so that counters that stand still
/// show), and QEMU's own log.
fn image_state(node: &Node) -> String {
    let mut text = String::new();
    match node.console(COMMAND_TIMEOUT) {
        Ok(mut console) => {
            for round in 0..2 {
                if round > 0 {
                    std::thread::sleep(Duration::from_secs(1));
                }
                for command in ["nvme", "status"] {
                    text.push_str(&format!("tandem> {command}\n"));
                    match console.command(command, COMMAND_TIMEOUT) {
                        Ok(lines) => lines.iter().for_each(|l| text.push_str(&format!("{l}\n"))),
                        Err(e) => text.push_str(&format!("(no answer: {e})\n")),
                    }
                }
            }
        }
        Err(e) => text.push_str(&format!("(no console: {e})\n")),
    }
    let qemu_log = std::fs::read_to_string(node.spec().qemu_log()).unwrap_or_default();
    text.push_str(&format!("QEMU's log:\n{qemu_log}"));
    text
}

/// Runs `job`; if it is overdue, takes the image's account of itself while
/// it runs on. Returns the result and that account.
fn run_watched(
    node: &Node,
    target: &Target,
    job: &JobSpec,
) -> (Result<JobResult, Error>, Option<String>) {
    std::thread::scope(|s| {
        let (done, finished) = mpsc::channel();
        let worker = s.spawn(move || {
            let mut log = Vec::new();
            let result = nvme_load::run_job(target, job, Some(&mut log));
            let _ = done.send(());
            result
        });
        let state = match finished.recv_timeout(job.runtime + OVERDUE) {
            Ok(()) => None,
            Err(_) => Some(image_state(node)),
        };
        (worker.join().expect("the job's thread"), state)
    })
}

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
    for name in nvme_load::JOB_NAMES {
        let mut job = JobSpec::named(name, 2, 4).unwrap();
        job.runtime = Duration::from_secs(1);
        job.ramp = Duration::ZERO;
        job.verify = true;
        job.range = Some(16 << 20);
        let started = node.started().elapsed().as_secs_f64();
        let (result, state) = run_watched(&node, &target, &job);
        let r = result.unwrap_or_else(|e| {
            panic!(
                "{name} (started {started:.3} s after QEMU): {e}\n\
                 the image while the job was overdue:\n{}\n\
                 console:\n{}",
                state.unwrap_or_else(|| "(not overdue)".into()),
                node.console_log()
            )
        });
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
