//! I/O commands, data movement (in-capsule, R2T/H2CData, C2HData), digests,
//! splitting, ordering, bounds.

mod common;

use common::*;
use tandem_nvme::host::HostEvent;
use tandem_nvme::wire::Status;
use tandem_nvme::wire::sqe::SqeBuilder;
use tandem_nvme::*;

#[test]
fn write_in_capsule_then_read_back() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let data = pattern(8192, 1);
    let cid = q.host.write(1, 10, data.clone(), 512, true);
    h.ok(&mut q, cid);
    assert_eq!(&h.backend.disks[&1][10 * 512..10 * 512 + 8192], &data[..]);
    let cid = q.host.read(1, 10, 16, 512);
    let (_, got) = h.ok(&mut q, cid);
    assert_eq!(got, data);
    let s = q.conn.info().stats;
    assert_eq!(
        (s.reads, s.writes, s.bytes_read, s.bytes_written, s.r2ts),
        (1, 1, 8192, 8192, 0)
    );
    // One copy of each data byte inside the crate (input to its buffer):
    // the Connect data (1 KiB) and the write (8 KiB); none for the read.
    assert_eq!(s.bytes_copied_in, 1024 + 8192);
    assert_eq!(h.target.stats().write_commands, 1);
}

#[test]
fn large_write_by_r2t_and_h2cdata_then_read() {
    let mut c = config();
    c.limits.max_h2c_data = 16384; // several H2CData PDUs per R2T
    let mut h = Harness::new(c);
    let (_a, mut q, _) = h.setup();
    let data = pattern(128 * 1024, 2);
    let cid = q.host.write(1, 100, data.clone(), 512, false);
    h.ok(&mut q, cid);
    assert!(q.events.iter().any(|e| matches!(
        e,
        HostEvent::R2T {
            length: 131072,
            offset: 0,
            ..
        }
    )));
    assert_eq!(
        &h.backend.disks[&1][100 * 512..100 * 512 + data.len()],
        &data[..]
    );
    let cid = q.host.read(1, 100, 256, 512);
    assert_eq!(h.ok(&mut q, cid).1, data);
    assert_eq!(q.conn.info().stats.r2ts, 1);
}

#[test]
fn four_k_namespace_io() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let data = pattern(3 * 4096, 3);
    let cid = q.host.write(2, NS2_BLOCKS - 3, data.clone(), 4096, false);
    h.ok(&mut q, cid);
    let cid = q.host.read(2, NS2_BLOCKS - 3, 3, 4096);
    assert_eq!(h.ok(&mut q, cid).1, data);
    let cid = q.host.read(2, NS2_BLOCKS - 2, 3, 4096);
    h.expect_status(&mut q, cid, Status::LBA_OUT_OF_RANGE);
}

#[test]
fn flush_write_zeroes_deallocate() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let cid = q.host.write(1, 0, vec![0xAB; 4096], 512, true);
    h.ok(&mut q, cid);
    let cid = q.host.flush(1);
    h.ok(&mut q, cid);
    assert_eq!(h.backend.flushes, 1);
    let cid = q.host.write_zeroes(1, 2, 2, false);
    h.ok(&mut q, cid);
    let d = &h.backend.disks[&1];
    assert!(d[1024..2048].iter().all(|&b| b == 0));
    assert!(d[..1024].iter().all(|&b| b == 0xAB) && d[2048..4096].iter().all(|&b| b == 0xAB));
    let cid = q.host.deallocate(1, &[(4, 2), (7, 1)]);
    h.ok(&mut q, cid);
    assert_eq!(
        h.backend.deallocated,
        vec![
            ByteRange {
                offset: 2048,
                len: 1024
            },
            ByteRange {
                offset: 3584,
                len: 512
            }
        ]
    );
    // A range past the end.
    let cid = q.host.deallocate(1, &[(NS1_BLOCKS - 1, 2)]);
    h.expect_status(&mut q, cid, Status::LBA_OUT_OF_RANGE);
    // DSM without the deallocate attribute does nothing.
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x09, cid)
        .nsid(1)
        .cdw(10, 0)
        .cdw(11, 1)
        .sgl(16, true)
        .build();
    q.host.submit(sqe, Some(vec![0; 16]), true);
    h.ok(&mut q, cid);
    // Write zeroes out of range; flush to all namespaces is not supported.
    let cid = q.host.write_zeroes(1, NS1_BLOCKS, 1, false);
    h.expect_status(&mut q, cid, Status::LBA_OUT_OF_RANGE);
    let cid = q.host.flush(0xFFFF_FFFF);
    h.expect_status(&mut q, cid, Status::INVALID_NAMESPACE);
}

#[test]
fn io_errors() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let cid = q.host.read(9, 0, 1, 512);
    h.expect_status(&mut q, cid, Status::INVALID_NAMESPACE);
    let cid = q.host.read(1, NS1_BLOCKS, 1, 512);
    h.expect_status(&mut q, cid, Status::LBA_OUT_OF_RANGE);
    let cid = q.host.read(1, u64::MAX, 1, 512);
    h.expect_status(&mut q, cid, Status::LBA_OUT_OF_RANGE);
    // Beyond MDTS (128 KiB).
    let cid = q.host.read(1, 0, 512, 512);
    h.expect_status(&mut q, cid, Status::INVALID_FIELD);
    for op in [0x03, 0x04, 0x05, 0x0C, 0x0D, 0x11, 0x80] {
        let cid = q.host.simple(op, 1);
        h.expect_status(&mut q, cid, Status::INVALID_OPCODE);
    }
    // SGL length not matching NLB.
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x02, cid)
        .nsid(1)
        .cdw(12, 7)
        .sgl(512, false)
        .build();
    q.host.submit(sqe, None, false);
    h.expect_status(&mut q, cid, Status::DATA_SGL_LENGTH_INVALID);
    // In-capsule SGL with a different amount of data.
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 1)
        .sgl(1024, true)
        .build();
    q.host.submit(sqe, Some(vec![0; 512]), true);
    h.expect_status(&mut q, cid, Status::DATA_SGL_LENGTH_INVALID);
    // Unknown SGL descriptor type.
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 0)
        .sgl(512, false)
        .u8_at(39, 0x00)
        .build();
    q.host.submit(sqe, None, false);
    h.expect_status(&mut q, cid, Status::SGL_TYPE_INVALID);
    // Duplicate command ID while the first is outstanding.
    q.auto_complete = false;
    let cid = q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    let sqe = SqeBuilder::new(0x02, cid).nsid(1).sgl(512, false).build();
    q.host.submit(sqe, None, false);
    h.expect_status(&mut q, cid, Status::COMMAND_ID_CONFLICT);
    h.complete_held(&mut q, &[0]);
    h.ok(&mut q, cid);
    // Backend failures map to statuses.
    let cid = q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    let req = q.held.pop().unwrap();
    q.conn
        .complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            req.id,
            BlockOutcome::Failed(BlockError::Media),
        )
        .unwrap();
    h.expect_status(&mut q, cid, Status::UNRECOVERED_READ_ERROR);
    let cid = q.host.write(1, 0, vec![1; 512], 512, true);
    h.pump(&mut q);
    let req = q.held.pop().unwrap();
    q.conn
        .complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            req.id,
            BlockOutcome::Failed(BlockError::Media),
        )
        .unwrap();
    h.expect_status(&mut q, cid, Status::WRITE_FAULT);
    let cid = q.host.write(1, 0, vec![1; 512], 512, true);
    h.pump(&mut q);
    let req = q.held.pop().unwrap();
    q.conn
        .complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            req.id,
            BlockOutcome::Failed(BlockError::AnaInaccessible),
        )
        .unwrap();
    let (cqe, _) = h.expect_status(&mut q, cid, Status::ANA_INACCESSIBLE);
    assert!(!cqe.status.dnr);
    // A read completed with the wrong amount of data.
    let cid = q.host.read(1, 0, 2, 512);
    h.pump(&mut q);
    let req = q.held.pop().unwrap();
    q.conn
        .complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            req.id,
            BlockOutcome::ReadData(vec![0; 3]),
        )
        .unwrap();
    h.expect_status(&mut q, cid, Status::INTERNAL_ERROR);
    // Completing an unknown request is an error for the caller, not the host.
    assert_eq!(
        q.conn.complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            RequestId(999),
            BlockOutcome::Done
        ),
        Err(Error::UnknownBlockRequest(999))
    );
    // Namespace not ready.
    h.target.set_namespace_ready(1, false).unwrap();
    let cid = q.host.read(1, 0, 1, 512);
    let (cqe, _) = h.expect_status(&mut q, cid, Status::NAMESPACE_NOT_READY);
    assert!(!cqe.status.dnr);
    h.target.set_namespace_ready(1, true).unwrap();
    assert_eq!(
        h.target.set_namespace_ready(5, true),
        Err(Error::NoSuchNamespace(5))
    );
}

#[test]
fn fua_and_disabled_write_cache() {
    let mut h = Harness::default();
    let (mut a, mut q, _) = h.setup();
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 1 << 30)
        .sgl(512, true)
        .build();
    q.host.submit(sqe, Some(vec![5; 512]), true);
    h.ok(&mut q, cid);
    assert_eq!(h.backend.fua_writes, 1);
    let cid = q.host.write(1, 0, vec![5; 512], 512, true);
    h.ok(&mut q, cid);
    assert_eq!(h.backend.fua_writes, 1);
    // With the cache disabled every write is FUA.
    let cid = a.host.set_features(0x06, 0);
    h.ok(&mut a, cid);
    let cid = q.host.write(1, 0, vec![5; 512], 512, true);
    h.ok(&mut q, cid);
    assert_eq!(h.backend.fua_writes, 2);
}

#[test]
fn out_of_order_completion_many_outstanding() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    for i in 0..128u64 {
        let cid = q.host.write(1, i * 8, pattern(4096, i as u8), 512, true);
        h.ok(&mut q, cid);
    }
    q.auto_complete = false;
    let cids: Vec<u16> = (0..128u64).map(|i| q.host.read(1, i * 8, 8, 512)).collect();
    h.pump(&mut q);
    assert_eq!(q.held.len(), 128, "QD 128 outstanding");
    assert_eq!(q.conn.info().outstanding, 128);
    let order: Vec<usize> = (0..128).rev().collect();
    h.complete_held(&mut q, &order);
    h.pump(&mut q);
    // Completions arrive in completion order, each with its own data.
    let got: Vec<u16> = q
        .events
        .iter()
        .filter_map(|e| match e {
            HostEvent::Completion { cqe, .. } => Some(cqe.cid),
            _ => None,
        })
        .collect();
    let mut expect = cids.clone();
    expect.reverse();
    assert_eq!(got, expect);
    for (i, cid) in cids.iter().enumerate() {
        let (_, data) = h.ok(&mut q, *cid);
        assert_eq!(data, pattern(4096, i as u8));
    }
}

#[test]
fn several_r2ts_outstanding_within_budget() {
    let mut c = config();
    c.limits.data_budget = 256 * 1024; // two 128 KiB writes at a time
    let mut h = Harness::new(c);
    let (_a, mut q, _) = h.setup();
    q.auto_complete = false;
    let cids: Vec<u16> = (0..4u64)
        .map(|i| {
            q.host
                .write(1, i * 256, pattern(128 * 1024, i as u8), 512, false)
        })
        .collect();
    h.pump(&mut q);
    let r2ts = q
        .events
        .iter()
        .filter(|e| matches!(e, HostEvent::R2T { .. }))
        .count();
    assert_eq!(r2ts, 2, "R2Ts only as the budget allows");
    assert_eq!(q.held.len(), 2);
    h.complete_held(&mut q, &[1, 0]);
    h.pump(&mut q);
    assert_eq!(q.held.len(), 2);
    h.complete_held(&mut q, &[0, 1]);
    for (i, cid) in cids.iter().enumerate() {
        h.ok(&mut q, *cid);
        let off = i * 256 * 512;
        assert_eq!(
            &h.backend.disks[&1][off..off + 128 * 1024],
            &pattern(128 * 1024, i as u8)[..]
        );
    }
}

#[test]
fn reads_wait_for_budget() {
    let mut c = config();
    c.limits.data_budget = 128 * 1024;
    let mut h = Harness::new(c);
    let (_a, mut q, _) = h.setup();
    q.auto_complete = false;
    let c1 = q.host.read(1, 0, 256, 512);
    let c2 = q.host.read(1, 0, 256, 512);
    h.pump(&mut q);
    assert_eq!(
        q.held.len(),
        1,
        "second read waits for the first's data to drain"
    );
    h.complete_held(&mut q, &[0]);
    h.pump(&mut q);
    assert_eq!(q.held.len(), 1);
    h.complete_held(&mut q, &[0]);
    h.ok(&mut q, c1);
    h.ok(&mut q, c2);
}

#[test]
fn byte_at_a_time_and_coalesced_input_and_output() {
    for hd in [false, true] {
        let mut h = Harness::default();
        let mut a = h.link(hd, hd);
        a.chunk = Some(1);
        let cntlid = h.admin(&mut a, 5000);
        let mut q = h.link(hd, hd);
        q.chunk = Some(1);
        h.io_queue(&mut q, cntlid, 1, false);
        let data = pattern(16384, 9);
        let cid = q.host.write(1, 0, data.clone(), 512, false);
        h.ok(&mut q, cid);
        let cid = q.host.read(1, 0, 32, 512);
        assert_eq!(h.ok(&mut q, cid).1, data);

        // Many PDUs in one buffer, output drained in odd-sized pieces.
        // (Commands outstanding together are unordered: writes first, then reads.)
        for phase in 0..2 {
            let mut cids = Vec::new();
            for i in 0..20u64 {
                cids.push(if phase == 0 {
                    q.host
                        .write(1, 100 + i, vec![i as u8; 512], 512, i % 2 == 0)
                } else {
                    q.host.read(1, 100 + i, 1, 512)
                });
            }
            let bytes = q.host.take_output();
            let n = q
                .conn
                .receive(&mut h.target, Instant::from_millis(h.now), &bytes);
            assert_eq!(n, bytes.len());
            q.chunk = Some(7);
            for (j, cid) in cids.iter().enumerate() {
                let (_, d) = h.ok(&mut q, *cid);
                if phase == 1 {
                    assert_eq!(d, vec![j as u8; 512]);
                }
            }
        }
    }
}

#[test]
fn digests_on_every_pdu() {
    let mut h = Harness::default();
    let mut a = h.link(true, true);
    let cntlid = h.admin(&mut a, 5000);
    assert!(a.host.header_digest() && a.host.data_digest());
    let mut q = h.link(true, true);
    h.io_queue(&mut q, cntlid, 1, false);
    let data = pattern(65536, 4);
    let cid = q.host.write(1, 0, data.clone(), 512, false);
    h.ok(&mut q, cid);
    let cid = q.host.write(1, 200, data[..4096].to_vec(), 512, true);
    h.ok(&mut q, cid);
    let cid = q.host.read(1, 0, 128, 512);
    assert_eq!(h.ok(&mut q, cid).1, data);
    let info = q.conn.info();
    assert!(info.header_digest && info.data_digest);
}

#[test]
fn header_digest_only_and_data_digest_only() {
    for (hd, dd) in [(true, false), (false, true)] {
        let mut h = Harness::default();
        let mut a = h.link(hd, dd);
        let cntlid = h.admin(&mut a, 5000);
        let mut q = h.link(hd, dd);
        h.io_queue(&mut q, cntlid, 1, false);
        let cid = q.host.write(1, 0, pattern(32768, 1), 512, false);
        h.ok(&mut q, cid);
        let cid = q.host.read(1, 0, 64, 512);
        assert_eq!(h.ok(&mut q, cid).1, pattern(32768, 1));
    }
}

#[test]
fn success_flag_when_sq_flow_control_disabled() {
    let mut h = Harness::default();
    let mut a = h.link(false, true);
    let cntlid = h.admin(&mut a, 5000);
    let mut q = h.link(false, true);
    h.io_queue(&mut q, cntlid, 1, true);
    let cid = q.host.write(1, 0, pattern(4096, 6), 512, true);
    h.ok(&mut q, cid);
    let cid = q.host.read(1, 0, 8, 512);
    let (cqe, data) = h.ok(&mut q, cid);
    assert_eq!(data, pattern(4096, 6));
    assert_eq!(
        cqe.sq_head, 0,
        "synthesized from the SUCCESS flag: no response capsule"
    );
    assert_eq!(q.conn.info().stats.reads, 1);
    // Without the flag, a response capsule follows the data (SQHD reported).
    let mut q2 = h.link(false, true);
    h.io_queue(&mut q2, cntlid, 2, false);
    let cid = q2.host.read(1, 0, 8, 512);
    let (cqe, data) = h.ok(&mut q2, cid);
    assert_eq!(data, pattern(4096, 6));
    assert_ne!(cqe.sq_head, 0);
    // Responses drained: the queue accepts the full depth again.
    assert_eq!(q.conn.info().outstanding, 0);
}

#[test]
fn ana_states_gate_io() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let cases = [
        (AnaState::Inaccessible, Some(Status::ANA_INACCESSIBLE)),
        (AnaState::Change, Some(Status::ANA_TRANSITION)),
        (AnaState::PersistentLoss, Some(Status::ANA_PERSISTENT_LOSS)),
        (AnaState::NonOptimized, None),
        (AnaState::Optimized, None),
    ];
    for (state, expect) in cases {
        h.target.set_ana_state(1, state).unwrap();
        let cids = [
            q.host.read(1, 0, 1, 512),
            q.host.write(1, 0, vec![1; 512], 512, true),
            q.host.write(1, 0, vec![1; 65536], 512, false),
            q.host.flush(1),
            q.host.write_zeroes(1, 0, 1, false),
            q.host.deallocate(1, &[(0, 1)]),
        ];
        for cid in cids {
            let (cqe, _) = h.wait(&mut q, cid);
            match expect {
                Some(s) => {
                    assert_eq!(cqe.status, s, "{state:?}");
                    assert!(!cqe.status.dnr, "path errors must be retryable");
                }
                None => assert!(cqe.status.is_success(), "{state:?}"),
            }
        }
        // Namespace 2 is in group 2: unaffected.
        let cid = q.host.read(2, 0, 1, 4096);
        h.ok(&mut q, cid);
    }
    // No R2T was sent for the writes refused by ANA.
    assert_eq!(q.conn.info().stats.r2ts, 2);
    assert_eq!(
        h.target.set_ana_state(9, AnaState::Optimized),
        Err(Error::NoSuchAnaGroup(9))
    );
}

fn ana_change_count(h: &mut Harness, a: &mut Link) -> (u64, u64, u8) {
    let cid = a.host.get_log_page(0x0C, 0, 4096, 0, 0);
    let (_, d) = h.ok(a, cid);
    let u64at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    (u64at(0), u64at(24), d[32])
}

#[test]
fn ana_change_raises_aen_and_bumps_change_count() {
    let mut h = Harness::default();
    let (mut a, _q, _) = h.setup();
    let cid = a.host.set_features(0x0B, 1 << 11);
    h.ok(&mut a, cid);
    let (c0, g0, s0) = ana_change_count(&mut h, &mut a);
    assert_eq!(s0, 1);
    let aer = a.host.simple(0x0C, 0);
    h.pump(&mut a);
    assert!(a.events.is_empty(), "AER stays outstanding");
    h.target.set_ana_state(1, AnaState::Inaccessible).unwrap();
    // Setting the same state again changes nothing.
    h.target.set_ana_state(1, AnaState::Inaccessible).unwrap();
    let (cqe, _) = h.ok(&mut a, aer);
    assert_eq!(cqe.result as u32, AEN_ANA_CHANGE);
    let (c1, g1, s1) = ana_change_count(&mut h, &mut a);
    assert!(c1 > c0 && g1 > g0);
    assert_eq!(s1, 3);
    // The host re-arms; the next change completes it.
    let aer = a.host.simple(0x0C, 0);
    h.pump(&mut a);
    h.target.set_ana_state(1, AnaState::Change).unwrap();
    h.ok(&mut a, aer);
    // Without reading the log (RAE semantics) further notices are masked.
    let aer = a.host.simple(0x0C, 0);
    h.pump(&mut a);
    h.target.set_ana_state(1, AnaState::Optimized).unwrap();
    h.pump(&mut a);
    assert!(a.events.is_empty());
    // An AEN queued while no AER is outstanding is delivered on the next AER.
    let (_, _, s) = ana_change_count(&mut h, &mut a);
    assert_eq!(s, 1);
    h.target.set_ana_state(1, AnaState::NonOptimized).unwrap();
    let (cqe, _) = h.ok(&mut a, aer);
    assert_eq!(cqe.result as u32, AEN_ANA_CHANGE);
    let mut changes = 0;
    while let Some(e) = h.target.poll_event() {
        changes += matches!(e, TargetEvent::AnaStateChanged { group: 1, .. }) as u32;
    }
    assert_eq!(changes, 4);
}

#[test]
fn aen_needs_async_event_config_and_aer_limit() {
    let mut h = Harness::default();
    let (mut a, _q, _) = h.setup();
    let aers: Vec<u16> = (0..4).map(|_| a.host.simple(0x0C, 0)).collect();
    let extra = a.host.simple(0x0C, 0);
    h.expect_status(&mut a, extra, Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
    h.target.set_ana_state(1, AnaState::Inaccessible).unwrap();
    h.pump(&mut a);
    assert!(a.events.is_empty(), "ANA notices not enabled");
    let cid = a.host.set_features(0x0B, 1 << 11);
    h.ok(&mut a, cid);
    h.target.set_ana_state(1, AnaState::Optimized).unwrap();
    h.pump(&mut a);
    let done = a
        .events
        .iter()
        .filter(|e| matches!(e, HostEvent::Completion { cqe, .. } if aers.contains(&cqe.cid)))
        .count();
    assert_eq!(done, 1, "one event completes one AER");
}

#[test]
fn keep_alive_expiry_tears_down_controller_and_queues() {
    let mut h = Harness::default();
    let mut a = h.link(false, false);
    let cntlid = h.admin(&mut a, 2000);
    let mut q = h.link(false, false);
    h.io_queue(&mut q, cntlid, 1, false);
    assert_eq!(
        a.conn.next_deadline(&h.target),
        Some(Instant::from_millis(h.now + 2001))
    );
    // Keep-alives within KATO keep it alive.
    for _ in 0..5 {
        h.now += 1500;
        let cid = a.host.simple(0x18, 0);
        h.ok(&mut a, cid);
    }
    // I/O traffic counts as activity too.
    h.now += 1500;
    let cid = q.host.read(1, 0, 1, 512);
    h.ok(&mut q, cid);
    h.now += 1500;
    a.conn.poll(&mut h.target, Instant::from_millis(h.now));
    assert_eq!(a.conn.state(), ConnectionState::Open);
    // Silence past KATO.
    q.auto_complete = false;
    let pending = q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    h.now += 2001;
    h.target.poll(h.now());
    assert_eq!(h.target.controllers().count(), 0);
    a.conn.poll(&mut h.target, Instant::from_millis(h.now));
    q.conn.poll(&mut h.target, Instant::from_millis(h.now));
    assert!(a.conn.wants_close() && q.conn.wants_close());
    assert_eq!(q.conn.info().outstanding, 0, "everything freed");
    assert!(!q.conn.has_output());
    // A late block completion is accepted and dropped.
    let req = q.held.pop().unwrap();
    q.conn
        .complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            req.id,
            BlockOutcome::ReadData(vec![0; 512]),
        )
        .unwrap();
    let _ = pending;
    let mut expired = false;
    while let Some(e) = h.target.poll_event() {
        expired |= e
            == TargetEvent::ControllerRemoved {
                cntlid,
                reason: RemovalReason::KeepAliveExpired,
            };
    }
    assert!(expired);
    // Its CNTLID cannot be joined any more.
    let mut q2 = h.link(false, false);
    h.initialize(&mut q2);
    let cid = q2
        .host
        .connect(2, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    h.expect_status(&mut q2, cid, Status::CONNECT_INVALID_PARAMETERS);
}

/// Answers to block commands may wait for a few more while other commands
/// are still with the block layer; the last one's answer, and anything that
/// is not such an answer (an R2T the host waits for), never waits.
#[test]
fn answers_may_wait_for_more_only_while_block_commands_are_under_way() {
    let mut h = Harness::default();
    let (_admin, mut q, _) = h.setup();
    q.auto_complete = false;
    let reads: Vec<u16> = (0..3).map(|i| q.host.read(1, i * 8, 8, 512)).collect();
    h.pump(&mut q);
    assert_eq!(q.held.len(), 3);
    assert!(!q.conn.output_may_wait(4, 16384), "nothing to send yet");
    h.complete_held(&mut q, &[0]);
    assert!(
        q.conn.output_may_wait(4, 16384),
        "two more reads are under way"
    );
    assert!(!q.conn.output_may_wait(1, 16384), "at most max_answers");
    assert!(!q.conn.output_may_wait(4, 4096), "at most max_bytes");
    h.complete_held(&mut q, &[0]);
    assert!(q.conn.output_may_wait(4, 16384));
    h.complete_held(&mut q, &[0]);
    assert!(
        !q.conn.output_may_wait(4, 16384),
        "the last answer does not wait"
    );
    for cid in reads {
        h.expect_status(&mut q, cid, Status::SUCCESS);
    }
    // An R2T in the output never waits, even with a read under way.
    let read = q.host.read(1, 0, 8, 512);
    h.pump(&mut q);
    let write = q.host.write(1, 64, vec![7; 16384], 512, false);
    let bytes = q.host.take_output();
    let now = h.now();
    q.conn.receive(&mut h.target, now, &bytes);
    assert!(q.conn.has_output(), "an R2T");
    assert!(!q.conn.output_may_wait(4, 16384));
    h.complete_held(&mut q, &[0]);
    h.expect_status(&mut q, read, Status::SUCCESS);
    h.complete_held(&mut q, &[0]);
    h.expect_status(&mut q, write, Status::SUCCESS);
    // Nor does an answer behind a Flush, which may take long.
    let flush = q.host.flush(1);
    let read = q.host.read(1, 0, 8, 512);
    h.pump(&mut q);
    assert_eq!(q.held.len(), 2);
    h.complete_held(&mut q, &[1]);
    assert!(!q.conn.output_may_wait(4, 16384));
    h.complete_held(&mut q, &[0]);
    h.expect_status(&mut q, read, Status::SUCCESS);
    h.expect_status(&mut q, flush, Status::SUCCESS);
}

/// Traffic Based Keep Alive: advertised, and a completion restarts the
/// timer (a host that sees completions sends no Keep Alive).
#[test]
fn completions_restart_the_keep_alive_timer() {
    let mut h = Harness::default();
    let mut a = h.link(false, false);
    let cntlid = h.admin(&mut a, 2000);
    let id = a.host.identify(0x01, 0, 0);
    let (_, data) = h.ok(&mut a, id);
    assert_ne!(
        u32::from_le_bytes(data[96..100].try_into().unwrap()) & (1 << 6),
        0,
        "CTRATT.TBKAS"
    );
    let mut q = h.link(false, false);
    h.io_queue(&mut q, cntlid, 1, false);
    q.auto_complete = false;
    let cid = q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    // The command is slow: its completion comes 1.5 s later, and the host,
    // having seen it, stays silent another 1.5 s: 3 s with no command.
    h.now += 1500;
    h.complete_held(&mut q, &[0]);
    h.expect_status(&mut q, cid, Status::SUCCESS);
    h.now += 1500;
    h.target.poll(h.now());
    assert_eq!(
        h.target.controllers().count(),
        1,
        "the completion counted as traffic"
    );
    h.now += 501;
    h.target.poll(h.now());
    assert_eq!(
        h.target.controllers().count(),
        0,
        "silence past KATO still expires it"
    );
}

#[test]
fn keep_alive_enforced_by_connection_poll_alone() {
    let mut h = Harness::default();
    let mut a = h.link(false, false);
    h.admin(&mut a, 1000);
    h.now += 1001;
    a.conn.poll(&mut h.target, Instant::from_millis(h.now));
    assert_eq!(a.conn.state(), ConnectionState::Closed);
    assert_eq!(h.target.controllers().count(), 0);
}

#[test]
fn handshake_timeout_closes_idle_connection() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    h.now += 9_999;
    l.conn.poll(&mut h.target, Instant::from_millis(h.now));
    assert_eq!(l.conn.state(), ConnectionState::Open);
    h.now += 1;
    l.conn.poll(&mut h.target, Instant::from_millis(h.now));
    assert!(l.conn.wants_close());
}

#[test]
fn queue_full_applies_backpressure_instead_of_buffering() {
    let mut h = Harness::default();
    let mut a = h.link(false, false);
    let cntlid = h.admin(&mut a, 5000);
    let mut q = h.link(false, false);
    h.initialize(&mut q);
    let cid = q
        .host
        .connect(1, 3, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false); // depth 4
    h.ok(&mut q, cid);
    q.auto_complete = false;
    let cids: Vec<u16> = (0..10).map(|i| q.host.read(1, i, 1, 512)).collect();
    let bytes = q.host.take_output();
    let n = q
        .conn
        .receive(&mut h.target, Instant::from_millis(h.now), &bytes);
    assert!(n < bytes.len(), "stops reading once the queue is full");
    let mut reqs = Vec::new();
    while let Some(r) = q.conn.next_block_request() {
        reqs.push(r);
    }
    assert_eq!(reqs.len(), 4);
    // Completing and draining makes room; the rest is then accepted.
    let mut rest = bytes[n..].to_vec();
    for r in reqs {
        let id = r.id;
        let out = h.backend.execute(r);
        q.conn
            .complete_block(&mut h.target, Instant::from_millis(h.now), id, out)
            .unwrap();
    }
    let mut sink = vec![0u8; 1 << 16];
    let drained = q.conn.write_output(&mut sink);
    q.host.feed(&sink[..drained]);
    while !rest.is_empty() {
        let n = q
            .conn
            .receive(&mut h.target, Instant::from_millis(h.now), &rest);
        rest.drain(..n);
        while let Some(r) = q.conn.next_block_request() {
            let id = r.id;
            let out = h.backend.execute(r);
            q.conn
                .complete_block(&mut h.target, Instant::from_millis(h.now), id, out)
                .unwrap();
        }
        let drained = q.conn.write_output(&mut sink);
        q.host.feed(&sink[..drained]);
        assert!(n > 0 || drained > 0, "progress");
    }
    q.auto_complete = true;
    for cid in cids {
        h.ok(&mut q, cid);
    }
}

#[test]
fn target_wide_budget_is_shared_and_returned() {
    let mut c = config();
    c.limits.data_budget = 128 * 1024;
    c.limits.total_data_budget = 128 * 1024;
    let mut h = Harness::new(c);
    let (_a, mut q1, cntlid) = h.setup();
    let mut q2 = h.link(false, false);
    h.io_queue(&mut q2, cntlid, 2, false);
    q1.auto_complete = false;
    q2.auto_complete = false;
    let c1 = q1.host.read(1, 0, 256, 512);
    h.pump(&mut q1);
    let c2 = q2.host.write(1, 256, pattern(131072, 1), 512, false);
    h.pump(&mut q2);
    assert_eq!(q1.held.len(), 1);
    assert!(
        q2.events
            .iter()
            .all(|e| !matches!(e, HostEvent::R2T { .. })),
        "no room for the R2T yet"
    );
    assert_eq!(h.target.data_in_use(), 131072);
    h.complete_held(&mut q1, &[0]);
    h.ok(&mut q1, c1);
    assert_eq!(h.target.data_in_use(), 0);
    // The other connection gets the room at its next poll.
    h.pump(&mut q2);
    assert!(q2.events.iter().any(|e| matches!(e, HostEvent::R2T { .. })));
    assert_eq!(q2.held.len(), 1);
    assert_eq!(h.target.data_in_use(), 131072);
    // Closing with the write in flight returns its share.
    q2.conn.close(&mut h.target);
    assert_eq!(h.target.data_in_use(), 0);
    let _ = c2;
    // So does dropping a connection that holds some.
    let c3 = q1.host.read(1, 0, 256, 512);
    h.pump(&mut q1);
    assert_eq!(h.target.data_in_use(), 131072);
    drop(q1);
    assert_eq!(h.target.data_in_use(), 0);
    let _ = c3;
}

#[test]
fn output_len_counts_the_bytes_still_to_send() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    assert_eq!(q.conn.output_len(), 0);
    q.auto_complete = false;
    let cid = q.host.read(1, 0, 16, 512);
    h.pump(&mut q);
    let req = q.held.pop().expect("the read at the disk");
    let id = req.id;
    let outcome = h.backend.execute(req);
    let now = h.now();
    q.conn
        .complete_block(&mut h.target, now, id, outcome)
        .unwrap();
    // C2HData header, the data, the response capsule.
    assert_eq!(q.conn.output_len(), 24 + 8192 + 24);
    q.conn.consume_output(10);
    assert_eq!(q.conn.output_len(), 24 + 8192 + 24 - 10);
    q.conn.consume_output(24 + 8192 - 10);
    assert_eq!(q.conn.output_len(), 24);
    let mut rest = [0u8; 64];
    assert_eq!(q.conn.write_output(&mut rest), 24);
    assert_eq!(q.conn.output_len(), 0);
    let _ = cid;
}
