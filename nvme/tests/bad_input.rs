//! Bad input: malformed, oversized, out-of-order PDUs and digest errors end
//! that one connection with a C2HTermReq carrying the right FES; invalid
//! commands get NVMe statuses; nothing a peer sends grows memory unboundedly.

mod common;

use common::*;
use tandem_nvme::host::HostEvent;
use tandem_nvme::wire::pdu::{self, flags};
use tandem_nvme::wire::sqe::SqeBuilder;
use tandem_nvme::wire::{DataHeader, IcReq, IcResp, R2t, Repr, Status, TermReq};
use tandem_nvme::*;

const INVALID_HEADER_FIELD: u16 = 1;
const SEQUENCE: u16 = 2;
const HEADER_DIGEST: u16 = 3;
const OUT_OF_RANGE: u16 = 4;
const LIMIT_EXCEEDED: u16 = 5;
const UNSUPPORTED: u16 = 6;

fn raw(repr: &Repr, data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut v = Vec::new();
    pdu::encode(repr, data, hd, dd, &Crc32c::default(), &mut v);
    v
}

/// After a fatal error on `bad`, a healthy connection still does I/O.
fn others_unaffected(h: &mut Harness) {
    let (_a, mut q, _) = h.setup();
    let cid = q.host.write(1, 0, vec![3; 512], 512, true);
    h.ok(&mut q, cid);
}

#[test]
fn unknown_pdu_type_first() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    l.host.take_output();
    l.host.send_raw(&[0x0A, 0, 24, 0, 24, 0, 0, 0]);
    assert_eq!(h.terminated(&mut l), (INVALID_HEADER_FIELD, 0));
    assert!(l.conn.error().is_some());
    others_unaffected(&mut h);
}

#[test]
fn command_before_icreq_and_second_icreq_are_sequence_errors() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    l.host.take_output();
    l.host
        .send_raw(&raw(&Repr::CapsuleCmd([0; 64]), &[], false, false));
    assert_eq!(h.terminated(&mut l).0, SEQUENCE);

    let mut l = h.link(false, false);
    h.initialize(&mut l);
    l.host.send_raw(&raw(
        &Repr::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            digest: 0,
            maxr2t: 0,
        }),
        &[],
        false,
        false,
    ));
    assert_eq!(h.terminated(&mut l).0, SEQUENCE);
    others_unaffected(&mut h);
}

#[test]
fn unsupported_icreq_parameters() {
    for (ic, fei) in [
        (
            IcReq {
                pfv: 1,
                hpda: 0,
                digest: 0,
                maxr2t: 0,
            },
            8,
        ),
        (
            IcReq {
                pfv: 0,
                hpda: 3,
                digest: 0,
                maxr2t: 0,
            },
            10,
        ),
        (
            IcReq {
                pfv: 0,
                hpda: 0,
                digest: 0x80,
                maxr2t: 0,
            },
            11,
        ),
    ] {
        let mut h = Harness::default();
        let mut l = h.link(false, false);
        l.host.take_output();
        l.host.send_raw(&raw(&Repr::IcReq(ic), &[], false, false));
        assert_eq!(h.terminated(&mut l), (UNSUPPORTED, fei));
    }
}

#[test]
fn pdus_only_a_controller_sends_are_rejected() {
    let d = DataHeader {
        cccid: 1,
        ttag: 0,
        offset: 0,
        length: 4,
        last: true,
        success: false,
    };
    let cases = [
        raw(
            &Repr::IcResp(IcResp {
                pfv: 0,
                cpda: 0,
                digest: 0,
                maxh2cdata: 4096,
            }),
            &[],
            false,
            false,
        ),
        raw(&Repr::CapsuleResp([0; 16]), &[], false, false),
        raw(&Repr::C2HData(d), &[0; 4], false, false),
        raw(
            &Repr::R2T(R2t {
                cccid: 1,
                ttag: 1,
                offset: 0,
                length: 4,
            }),
            &[],
            false,
            false,
        ),
        raw(
            &Repr::C2HTermReq(TermReq { fes: 1, fei: 0 }),
            &[],
            false,
            false,
        ),
    ];
    for bytes in cases {
        let mut h = Harness::default();
        let mut l = h.link(false, false);
        h.initialize(&mut l);
        l.host.send_raw(&bytes);
        assert_eq!(h.terminated(&mut l), (INVALID_HEADER_FIELD, 0));
    }
}

#[test]
fn header_digest_mismatch() {
    let mut h = Harness::default();
    let mut l = h.link(true, false);
    h.initialize(&mut l);
    let mut bytes = raw(&Repr::CapsuleCmd([0; 64]), &[], true, false);
    bytes[30] ^= 0x40;
    l.host.send_raw(&bytes);
    let (fes, _) = h.terminated(&mut l);
    assert_eq!(fes, HEADER_DIGEST);
    // The C2HTermReq carries the offending header.
    let data = l.events.iter().find_map(|e| match e {
        HostEvent::Terminated { data, .. } => Some(data.clone()),
        _ => None,
    });
    assert_eq!(data.unwrap(), bytes[..76].to_vec());
    others_unaffected(&mut h);
}

#[test]
fn digest_flags_must_match_negotiation() {
    // Negotiated header digest, PDU without it.
    let mut h = Harness::default();
    let mut l = h.link(true, false);
    h.initialize(&mut l);
    l.host
        .send_raw(&raw(&Repr::CapsuleCmd([0; 64]), &[], false, false));
    assert_eq!(h.terminated(&mut l), (INVALID_HEADER_FIELD, 1));
    // Not negotiated, PDU with a data digest.
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    l.host
        .send_raw(&raw(&Repr::CapsuleCmd([0; 64]), &[1; 16], false, true));
    assert_eq!(h.terminated(&mut l), (INVALID_HEADER_FIELD, 1));
}

#[test]
fn data_digest_error_fails_the_command_not_the_connection() {
    let mut h = Harness::default();
    let mut a = h.link(false, true);
    let cntlid = h.admin(&mut a, 5000);
    let mut q = h.link(false, true);
    h.io_queue(&mut q, cntlid, 1, false);
    // In-capsule write with a corrupted digest.
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 0)
        .sgl(512, true)
        .build();
    let mut bytes = Vec::new();
    q.host
        .encode(&Repr::CapsuleCmd(sqe), &[0xEE; 512], &mut bytes);
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    q.host.send_raw(&bytes);
    let (cqe, _) = h.expect_status(&mut q, cid, Status::TRANSIENT_TRANSPORT_ERROR);
    assert!(!cqe.status.dnr);
    assert!(
        h.backend.disks[&1][..512].iter().all(|&b| b == 0),
        "nothing written"
    );
    // R2T write whose H2CData digest is corrupted.
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 7)
        .sgl(4096, false)
        .build();
    q.host.submit(sqe, None, false);
    h.pump(&mut q);
    let d = DataHeader {
        cccid: cid,
        ttag: cid,
        offset: 0,
        length: 4096,
        last: true,
        success: false,
    };
    let mut bytes = Vec::new();
    q.host.encode(&Repr::H2CData(d), &[0xEE; 4096], &mut bytes);
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    q.host.send_raw(&bytes);
    h.expect_status(&mut q, cid, Status::TRANSIENT_TRANSPORT_ERROR);
    assert!(h.backend.disks[&1][..4096].iter().all(|&b| b == 0));
    // The connection keeps working.
    let cid = q.host.write(1, 0, vec![1; 4096], 512, false);
    h.ok(&mut q, cid);
    assert_eq!(q.conn.state(), ConnectionState::Open);
}

#[test]
fn oversized_in_capsule_data() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 16)
        .sgl(8704, true)
        .build();
    let mut bytes = Vec::new();
    q.host
        .encode(&Repr::CapsuleCmd(sqe), &[0; 8704], &mut bytes);
    q.host.send_raw(&bytes);
    assert_eq!(h.terminated(&mut q).0, LIMIT_EXCEEDED);
    // The limit is checked from the header: nothing of the data was buffered.
    assert_eq!(q.conn.info().outstanding, 0);
}

#[test]
fn bad_pdo() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    let mut bytes = raw(&Repr::CapsuleCmd([0; 64]), &[0; 16], false, false);
    bytes[3] = 80; // padding the target did not ask for (CPDA 0)
    bytes[4..8].copy_from_slice(&(80u32 + 16).to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    q.host.send_raw(&bytes);
    assert_eq!(h.terminated(&mut q), (INVALID_HEADER_FIELD, 3));
}

fn r2t_link(h: &mut Harness) -> (Link, Link, u16) {
    let (a, mut q, c) = h.setup();
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 15)
        .sgl(8192, false)
        .build();
    q.host.submit(sqe, None, false);
    h.pump(&mut q);
    assert!(matches!(q.events.last(), Some(HostEvent::R2T { .. })));
    let _ = c;
    (a, q, cid)
}

fn h2c(cid: u16, ttag: u16, offset: u32, len: usize, last: bool) -> Vec<u8> {
    let d = DataHeader {
        cccid: cid,
        ttag,
        offset,
        length: len as u32,
        last,
        success: false,
    };
    raw(&Repr::H2CData(d), &vec![0x5A; len], false, false)
}

#[test]
fn h2cdata_errors() {
    let mut h = Harness::default();
    // Unknown transfer tag.
    let (_a, mut q, cid) = r2t_link(&mut h);
    q.host.send_raw(&h2c(cid, cid + 100, 0, 512, false));
    assert_eq!(h.terminated(&mut q), (INVALID_HEADER_FIELD, 10));
    // CCCID not matching the tag.
    let (_a, mut q, cid) = r2t_link(&mut h);
    q.host.send_raw(&h2c(cid + 1, cid, 0, 512, false));
    assert_eq!(h.terminated(&mut q), (INVALID_HEADER_FIELD, 8));
    // Out of order.
    let (_a, mut q, cid) = r2t_link(&mut h);
    q.host.send_raw(&h2c(cid, cid, 512, 512, false));
    assert_eq!(h.terminated(&mut q).0, OUT_OF_RANGE);
    // Past the solicited range.
    let (_a, mut q, cid) = r2t_link(&mut h);
    q.host.send_raw(&h2c(cid, cid, 0, 8192 + 512, true));
    assert_eq!(h.terminated(&mut q).0, OUT_OF_RANGE);
    // LAST before the end.
    let (_a, mut q, cid) = r2t_link(&mut h);
    q.host.send_raw(&h2c(cid, cid, 0, 512, true));
    assert_eq!(h.terminated(&mut q), (INVALID_HEADER_FIELD, 1));
    // Unsolicited H2CData (no R2T at all).
    let (_a, mut q, _) = h.setup();
    q.host.send_raw(&h2c(1, 1, 0, 512, true));
    assert_eq!(h.terminated(&mut q), (INVALID_HEADER_FIELD, 10));
    others_unaffected(&mut h);
}

#[test]
fn h2cdata_larger_than_maxh2cdata() {
    let mut c = config();
    c.limits.max_h2c_data = 4096;
    let mut h = Harness::new(c);
    let (_a, mut q, cid) = r2t_link(&mut h);
    q.host.send_raw(&h2c(cid, cid, 0, 8192, true));
    assert_eq!(h.terminated(&mut q).0, LIMIT_EXCEEDED);
}

#[test]
fn host_termination_request_closes_at_once() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    q.host.send_raw(&raw(
        &Repr::H2CTermReq(TermReq { fes: 2, fei: 0 }),
        &[1, 2, 3],
        false,
        false,
    ));
    h.pump(&mut q);
    assert_eq!(q.conn.state(), ConnectionState::Closed);
    assert_eq!(q.conn.error(), Some(&Error::PeerTerminated { fes: 2 }));
    assert!(!q.conn.has_output());
    others_unaffected(&mut h);
}

#[test]
fn garbage_trickled_byte_by_byte() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    l.chunk = Some(1);
    // A plausible header whose PLEN is below HLEN.
    l.host.send_raw(&[0x04, 0, 72, 0, 10, 0, 0, 0]);
    assert_eq!(h.terminated(&mut l), (INVALID_HEADER_FIELD, 4));
    // Input after the termination is swallowed, not processed.
    let n = l
        .conn
        .receive(&mut h.target, Instant::from_millis(h.now), &[0xFF; 100]);
    assert_eq!(n, 100);
}

#[test]
fn input_after_fatal_error_is_ignored_and_only_the_term_req_is_sent() {
    let mut h = Harness::default();
    let (_a, mut q, _) = h.setup();
    // A read in flight, then a broken PDU and more commands in one segment.
    q.auto_complete = false;
    let cid = q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    assert_eq!(q.held.len(), 1);
    q.host.send_raw(&[0x0B, 0, 24, 0, 24, 0, 0, 0]);
    q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    assert_eq!(q.held.len(), 1, "nothing after the garbage was issued");
    let req = q.held.pop().unwrap();
    // Completing it after the termination is harmless.
    q.conn
        .complete_block(
            &mut h.target,
            Instant::from_millis(h.now),
            req.id,
            BlockOutcome::ReadData(vec![0; 512]),
        )
        .unwrap();
    assert!(
        q.events
            .iter()
            .all(|e| !matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid))
    );
    assert!(matches!(
        q.events.last(),
        Some(HostEvent::Terminated { fes: 1, .. })
    ));
}

#[test]
fn admin_queue_fatal_error_frees_the_controller() {
    let mut h = Harness::default();
    let (mut a, mut q, _) = h.setup();
    a.host.send_raw(&[0xFF; 8]);
    h.terminated(&mut a);
    assert_eq!(h.target.controllers().count(), 0);
    let cid = q.host.read(1, 0, 1, 512);
    h.pump(&mut q);
    assert_eq!(q.conn.state(), ConnectionState::Closed);
    assert!(
        q.events
            .iter()
            .all(|e| !matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid))
    );
}

#[test]
fn hundreds_of_idle_and_half_open_connections_are_reaped() {
    let mut h = Harness::default();
    let mut conns: Vec<Connection> = (0..300)
        .map(|_| Connection::new(&h.target, Instant::from_millis(h.now)))
        .collect();
    // Some send half a header, some half an ICReq, some nothing.
    let ic = raw(
        &Repr::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            digest: 0,
            maxr2t: 0,
        }),
        &[],
        false,
        false,
    );
    for (i, c) in conns.iter_mut().enumerate() {
        let n = [0usize, 5, 64, 127][i % 4];
        assert_eq!(
            c.receive(&mut h.target, Instant::from_millis(h.now), &ic[..n]),
            n
        );
    }
    // A well-behaved host meanwhile works.
    let (_a, mut q, _) = h.setup();
    let cid = q.host.read(1, 0, 1, 512);
    h.ok(&mut q, cid);
    h.now += 10_000;
    for c in &mut conns {
        c.poll(&mut h.target, Instant::from_millis(h.now));
        assert!(c.wants_close());
    }
}

#[test]
fn abandoned_mid_pdu_is_reaped_by_keep_alive() {
    let mut h = Harness::default();
    let (mut a, mut q, _) = h.setup();
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 255)
        .sgl(131072, false)
        .build();
    q.host.submit(sqe, None, false);
    h.pump(&mut q);
    // Half of the data, then silence.
    let bytes = h2c(cid, cid, 0, 65536, false);
    q.host.send_raw(&bytes);
    h.pump(&mut q);
    h.now += 10_001;
    a.conn.poll(&mut h.target, Instant::from_millis(h.now));
    q.conn.poll(&mut h.target, Instant::from_millis(h.now));
    assert!(a.conn.wants_close() && q.conn.wants_close());
    assert_eq!(q.conn.info().outstanding, 0);
}

#[test]
fn flags_on_capsule_that_no_pdu_defines() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let mut b = raw(&Repr::CapsuleCmd([0; 64]), &[], false, false);
    b[1] = flags::DATA_SUCCESS;
    l.host.send_raw(&b);
    assert_eq!(h.terminated(&mut l), (INVALID_HEADER_FIELD, 1));
}
