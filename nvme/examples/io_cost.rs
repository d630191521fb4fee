//! Drives 4 KiB reads and writes through one Connection (command PDU in →
//! completion PDU out, block requests completed at once) so that the cost per
//! command can be measured without any I/O, e.g.
//!
//! ```text
//! cargo build --release -p tandem-nvme --features host --example io_cost
//! valgrind --tool=callgrind target/release/examples/io_cost read 10000
//! ```
//!
//! Prints the bytes this crate copied per command (`QueueStats`).

use tandem_nvme::host::{HostEvent, Initiator};
use tandem_nvme::*;

// The target-side work, kept out of line so a profiler can attribute it
// (callgrind: the inclusive cost of these three functions).
#[inline(never)]
fn target_receive(conn: &mut Connection, t: &mut Target, now: Instant, bytes: &[u8]) -> usize {
    conn.receive(t, now, bytes)
}

#[inline(never)]
fn target_complete(
    conn: &mut Connection,
    t: &mut Target,
    now: Instant,
    req: BlockRequest,
    disk: &[u8],
) {
    let outcome = match req.op {
        BlockOp::Read { .. } => BlockOutcome::ReadData(disk.to_vec()),
        _ => BlockOutcome::Done,
    };
    conn.complete_block(t, now, req.id, outcome)
        .expect("known request");
}

#[inline(never)]
fn target_transmit(conn: &mut Connection, host: &mut Initiator) {
    loop {
        let chunk = conn.output();
        if chunk.is_empty() {
            break;
        }
        host.feed(chunk);
        let n = chunk.len();
        conn.consume_output(n);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "read".into());
    let count: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let digests = args.next().is_some_and(|s| s == "digests");

    let mut cfg = TargetConfig::new("nqn.2026-11.dev.tandem:bench");
    cfg.namespaces = vec![NamespaceConfig {
        nsid: 1,
        blocks: 1 << 16,
        lba_shift: 12,
        nguid: [1; 16],
        uuid: [2; 16],
        ana_group: 1,
    }];
    let mut t = Target::new(cfg).expect("valid configuration");
    let now = Instant::from_millis(0);
    let disk = vec![0x5Au8; 4096];

    let run = |conn: &mut Connection, host: &mut Initiator, t: &mut Target| -> Vec<HostEvent> {
        let out = host.take_output();
        let n = target_receive(conn, t, now, &out);
        assert_eq!(n, out.len());
        while let Some(req) = conn.next_block_request() {
            target_complete(conn, t, now, req, &disk);
        }
        target_transmit(conn, host);
        let mut evs = Vec::new();
        while let Some(e) = host.poll_event().expect("valid PDUs") {
            evs.push(e);
        }
        evs
    };

    let mut admin = Connection::new(&t, now);
    let mut ha = Initiator::new(digests, digests);
    ha.connect(
        0,
        31,
        0,
        [1; 16],
        0xFFFF,
        "nqn.2026-11.dev.tandem:bench",
        "nqn.host",
        false,
    );
    let evs = run(&mut admin, &mut ha, &mut t);
    let cntlid = evs
        .iter()
        .find_map(|e| match e {
            HostEvent::Completion { cqe, .. } => Some(cqe.result as u16),
            _ => None,
        })
        .expect("connected");
    ha.enable();
    run(&mut admin, &mut ha, &mut t);
    let mut q = Connection::new(&t, now);
    let mut hq = Initiator::new(digests, digests);
    hq.connect(
        1,
        127,
        0,
        [1; 16],
        cntlid,
        "nqn.2026-11.dev.tandem:bench",
        "nqn.host",
        false,
    );
    run(&mut q, &mut hq, &mut t);
    let before = q.info().stats;

    let data = vec![0xA5u8; 4096];
    for i in 0..count {
        let lba = i % (1 << 16);
        if mode == "write" {
            hq.write(1, lba, data.clone(), 4096, true);
        } else {
            hq.read(1, lba, 1, 4096);
        }
        let evs = run(&mut q, &mut hq, &mut t);
        assert!(
            evs.iter()
                .any(|e| matches!(e, HostEvent::Completion { .. }))
        );
    }
    let s = q.info().stats;
    println!(
        "{count} x 4 KiB {mode}: bytes copied by the crate per command: in {} out {}",
        (s.bytes_copied_in - before.bytes_copied_in) / count.max(1),
        (s.bytes_copied_out - before.bytes_copied_out) / count.max(1)
    );
}
