//! `bench nvme` against an NVMe/TCP target on the loopback: the nvme
//! crate's own target over std sockets, one thread per connection, with an
//! in-memory disk; and its errors when nothing listens or the target
//! refuses. (Against the booted image: tests/tests/nvme_load.rs.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_nvme::{
    BlockOp, BlockOutcome, Connection, Instant as NvmeInstant, NamespaceConfig, Target,
    TargetConfig,
};
use tandem_qemu::Error;
use tandem_qemu::nvme_load::{self, JobSpec};

const NQN: &str = "nqn.2026-11.io.tandem.test:loopback";
const BLOCKS: u64 = 16384;
const LBA: u64 = 512;

/// A target on 127.0.0.1; `corrupt` flips a bit in every read it serves;
/// with `hold`, reads never leave the disk.
struct LoopbackTarget {
    port: u16,
    corrupt: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
}

fn now(start: std::time::Instant) -> NvmeInstant {
    NvmeInstant::from_millis(start.elapsed().as_millis() as u64)
}

fn serve(
    mut stream: TcpStream,
    target: Arc<Mutex<Target>>,
    disk: Arc<Mutex<Vec<u8>>>,
    corrupt: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
) {
    let mut held = Vec::new();
    let start = std::time::Instant::now();
    let mut conn = Connection::new(&target.lock().unwrap(), now(start));
    // Answers go out in several writes: without this, Nagle holds the
    // later ones for the host's delayed ACK.
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        let mut t = target.lock().unwrap();
        let used = conn.receive(&mut t, now(start), &pending);
        pending.drain(..used);
        while let Some(req) = conn.next_block_request() {
            if hold.load(Ordering::Relaxed) && matches!(req.op, BlockOp::Read { .. }) {
                held.push(req);
                continue;
            }
            let outcome = match req.op {
                BlockOp::Read { offset, len } => {
                    let d = disk.lock().unwrap();
                    let mut data = d[offset as usize..offset as usize + len as usize].to_vec();
                    if corrupt.load(Ordering::Relaxed) {
                        data[100] ^= 1;
                    }
                    BlockOutcome::ReadData(data)
                }
                BlockOp::Write { offset, data, .. } => {
                    let mut d = disk.lock().unwrap();
                    d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                    BlockOutcome::Done
                }
                _ => BlockOutcome::Done,
            };
            conn.complete_block(&mut t, now(start), req.id, outcome)
                .unwrap();
        }
        conn.poll(&mut t, now(start));
        drop(t);
        while conn.has_output() {
            let out = conn.output().to_vec();
            if stream.write_all(&out).is_err() {
                return;
            }
            conn.consume_output(out.len());
        }
        if conn.wants_close() {
            let _ = stream.shutdown(Shutdown::Both);
            break;
        }
    }
    conn.close(&mut target.lock().unwrap());
}

impl LoopbackTarget {
    fn start() -> LoopbackTarget {
        let mut cfg = TargetConfig::new(NQN);
        cfg.namespaces = vec![NamespaceConfig {
            nsid: 1,
            blocks: BLOCKS,
            lba_shift: 9,
            nguid: [1; 16],
            uuid: [2; 16],
            ana_group: 1,
        }];
        let target = Arc::new(Mutex::new(Target::new(cfg).unwrap()));
        let disk = Arc::new(Mutex::new(vec![0u8; (BLOCKS * LBA) as usize]));
        let corrupt = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (c, h) = (corrupt.clone(), hold.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (t, d, c, h) = (target.clone(), disk.clone(), c.clone(), h.clone());
                std::thread::spawn(move || serve(stream, t, d, c, h));
            }
        });
        LoopbackTarget {
            port,
            corrupt,
            hold,
        }
    }

    fn target(&self) -> nvme_load::Target {
        nvme_load::Target::new("127.0.0.1", self.port, NQN)
    }
}

fn job(name: &str, connections: u32, depth: u32, verify: bool) -> JobSpec {
    let mut j = JobSpec::named(name, connections, depth).unwrap();
    j.runtime = Duration::from_millis(700);
    j.ramp = Duration::ZERO;
    j.verify = verify;
    j
}

#[test]
fn every_job_runs_and_verified_data_reads_back() {
    let lo = LoopbackTarget::start();
    let target = lo.target();
    let mut log = Vec::new();
    for name in nvme_load::JOB_NAMES {
        let mut spec = job(name, 2, 8, true);
        if name == "randwrite-4k" {
            // Long enough for a progress line.
            spec.runtime = Duration::from_millis(1500);
        }
        let r = nvme_load::run_job(&target, &spec, Some(&mut log)).unwrap();
        assert!(r.ios > 50, "{name}: only {} I/Os", r.ios);
        assert!(
            r.ok(),
            "{name}: {:?} {:?}",
            r.first_error,
            r.first_verify_failure
        );
        assert_eq!(r.bytes, r.ios * r.block_size as u64);
        let l = &r.latency;
        assert!(
            l.p50_us > 0.0
                && l.p50_us <= l.p99_us
                && l.p99_us <= l.p999_us
                && l.p999_us <= l.max_us
        );
        assert_eq!(l.cdf.last().unwrap().1, l.max_us);
    }
    // The first job wrote and the reads found the tags (random 4 KiB over
    // 8 MiB: many blocks were read after being written).
    let text = String::from_utf8(log).unwrap();
    assert!(text.contains(" s run "), "no progress lines:\n{text}");

    // An open loop keeps to its rate.
    let mut open = job("randread-4k", 1, 16, false);
    open.rate = Some(400);
    open.runtime = Duration::from_secs(1);
    let r = nvme_load::run_job(&target, &open, None::<&mut Vec<u8>>).unwrap();
    assert!(
        (300..=500).contains(&r.ios),
        "{} I/Os at 400/s for 1 s",
        r.ios
    );
}

/// Commands that never complete fail the job after its drain time, and the
/// error names each one and how much of its data arrived.
#[test]
fn commands_that_never_complete_are_named() {
    let lo = LoopbackTarget::start();
    lo.hold.store(true, Ordering::Relaxed);
    let mut spec = job("read-128k", 1, 2, false);
    spec.runtime = Duration::from_millis(300);
    spec.drain = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let e = nvme_load::run_job(&lo.target(), &spec, None::<&mut Vec<u8>>).unwrap_err();
    assert!(matches!(e, Error::TargetFailed { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("2 commands still outstanding 0.5 s after the run ended"),
        "{text}"
    );
    assert!(text.contains("read of LBA 0 (cid "), "{text}");
    assert!(text.contains("read of LBA 256 (cid "), "{text}");
    assert!(text.contains("0 of 131072 data bytes arrived"), "{text}");
    assert!(text.contains("the connection received "), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn corrupt_reads_are_caught() {
    let lo = LoopbackTarget::start();
    let target = lo.target();
    nvme_load::run_job(
        &target,
        &job("write-128k", 1, 4, true),
        None::<&mut Vec<u8>>,
    )
    .unwrap();
    lo.corrupt.store(true, Ordering::Relaxed);
    let r = nvme_load::run_job(
        &target,
        &job("randread-4k", 1, 4, true),
        None::<&mut Vec<u8>>,
    )
    .unwrap();
    assert!(r.verify_failures > 0 && !r.ok());
    let first = r.first_verify_failure.unwrap();
    assert!(first.contains("corrupt from byte 100"), "{first}");
}

#[test]
fn an_unreachable_target_is_a_clean_error() {
    // A port nobody listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let target = nvme_load::Target::new("127.0.0.1", port, NQN);
    match nvme_load::run_job(
        &target,
        &job("randread-4k", 1, 1, false),
        None::<&mut Vec<u8>>,
    ) {
        Err(e @ Error::TargetUnreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
            assert!(text.contains("refused"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refusing_target_is_a_clean_error() {
    let lo = LoopbackTarget::start();
    let mut target = lo.target();
    target.subnqn = "nqn.2026-11.io.tandem.test:nobody-here".into();
    match nvme_load::run_job(
        &target,
        &job("randread-4k", 1, 1, false),
        None::<&mut Vec<u8>>,
    ) {
        Err(e @ Error::TargetRefused { .. }) => {
            let text = e.to_string();
            assert!(text.contains("admin queue's Connect"), "{text}");
            assert!(text.contains("invalid parameters"), "{text}");
        }
        other => panic!("{other:?}"),
    }

    // Deeper queues than the target has.
    match nvme_load::run_job(
        &lo.target(),
        &job("randread-4k", 1, 500, false),
        None::<&mut Vec<u8>>,
    ) {
        Err(Error::Usage(m)) => assert!(m.contains("MQES"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Something that accepts TCP and hangs up at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            drop(s);
        }
    });
    let target = nvme_load::Target::new("127.0.0.1", port, NQN);
    match nvme_load::run_job(
        &target,
        &job("randread-4k", 1, 1, false),
        None::<&mut Vec<u8>>,
    ) {
        Err(e @ Error::TargetRefused { .. }) => {
            let text = e.to_string();
            assert!(text.contains("ICReq"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}
