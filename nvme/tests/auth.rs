//! NVMe in-band authentication (DH-HMAC-CHAP) through whole connections: the
//! Connect response asks for it, other commands are refused until it is done
//! on each queue, right and wrong secrets, bidirectional, DH groups,
//! re-authentication, and the deadline.

mod common;

use common::*;
use tandem_nvme::auth::message::{self, build};
use tandem_nvme::auth::{DhGroup, DhchapHost, DhchapSecret, HashId, crypto};
use tandem_nvme::wire::Status;
use tandem_nvme::{ConnectionState, TargetConfig};

/// 32 bytes 0..31 with the SHA-256 transform; the controller's: 48 bytes.
const HOST_SECRET: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const WRONG_SECRET: &str = "DHHC-1:01:AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8ge/xg:";
const ATR: u64 = 1 << 17;

fn ctrl_secret() -> String {
    // 48 bytes 0x40..0x6f, CRC-32 little-endian, as nvme-cli would print it.
    let key: Vec<u8> = (0x40u8..0x70).collect();
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&key);
    let mut raw = key.clone();
    raw.extend_from_slice(&crc.to_le_bytes());
    format!("DHHC-1:00:{}:", base64(&raw))
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            s.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

fn auth_config(ctrl: bool) -> TargetConfig {
    let mut c = config();
    c.dhchap_hosts.push(DhchapHost {
        host_nqn: HOSTNQN.into(),
        host_secret: DhchapSecret::parse(HOST_SECRET).unwrap(),
        ctrl_secret: ctrl.then(|| DhchapSecret::parse(&ctrl_secret()).unwrap()),
    });
    c
}

fn harness(ctrl: bool) -> Harness {
    let mut h = Harness::new(auth_config(ctrl));
    h.target.seed_random(b"test entropy");
    h
}

/// What the host side of one transaction sees.
#[derive(Debug, PartialEq, Eq)]
enum Result_ {
    Success,
    /// Failure1 from the controller, with its explanation.
    Refused(u8),
    /// The controller's response did not match (the host sent Failure2).
    ControllerWrong,
}

/// Runs the host side of DH-HMAC-CHAP on `l`, like the Linux host: all
/// hashes and groups offered (or the given ones), `ctrl` for bidirectional.
fn authenticate(
    h: &mut Harness,
    l: &mut Link,
    secret: &str,
    ctrl: Option<&str>,
    groups: &[u8],
) -> (Result_, HashId, DhGroup) {
    let tid = 0x21;
    let cid = l.host.auth_send(build::negotiate(tid, &[1, 2, 3], groups));
    h.ok(l, cid);
    let cid = l.host.auth_receive(4096);
    let (_, c) = h.ok(l, cid);
    assert_eq!(c.len(), 4096, "padded to the allocation length");
    if c[1] == message::ID_FAILURE1 {
        return (Result_::Refused(c[7]), HashId::Sha256, DhGroup::Null);
    }
    assert_eq!((c[0], c[1]), (message::TYPE_DHCHAP, message::ID_CHALLENGE));
    assert_eq!(u16::from_le_bytes([c[4], c[5]]), tid);
    let hash = HashId::from_u8(c[8]).unwrap();
    let group = DhGroup::from_u8(c[9]).unwrap();
    let hl = c[6] as usize;
    assert_eq!(hl, hash.digest_len());
    let dhvlen = u16::from_le_bytes([c[10], c[11]]) as usize;
    assert_eq!(dhvlen, group.value_len());
    let s1 = u32::from_le_bytes([c[12], c[13], c[14], c[15]]);
    let c1 = c[16..16 + hl].to_vec();
    let (ks, public) = if group == DhGroup::Null {
        (None, Vec::new())
    } else {
        let x = [0x5Au8; 32];
        let y_ctrl = &c[16 + hl..16 + hl + dhvlen];
        (
            Some(group.shared_secret(y_ctrl, &x).unwrap()),
            group.public_value(&x).unwrap(),
        )
    };
    let key = DhchapSecret::parse(secret).unwrap().key_for(HOSTNQN);
    let ca = crypto::augmented_challenge(hash, ks.as_deref(), &c1);
    let r1 = crypto::host_response(hash, &key, &ca, s1, tid, HOSTNQN, SUBNQN);
    let c2 = vec![0x77u8; hl];
    let s2 = 0x0BAD_F00D;
    let cid = l.host.auth_send(build::reply(
        tid,
        if ctrl.is_some() { s2 } else { 0 },
        &r1,
        ctrl.is_some().then_some(&c2[..]),
        &public,
    ));
    h.ok(l, cid);
    let cid = l.host.auth_receive(4096);
    let (_, m) = h.ok(l, cid);
    if m[1] == message::ID_FAILURE1 {
        return (Result_::Refused(m[7]), hash, group);
    }
    assert_eq!(
        (m[0], m[1], m[6] as usize),
        (message::TYPE_DHCHAP, message::ID_SUCCESS1, hl)
    );
    if let Some(ctrl) = ctrl {
        assert_eq!(m[8], 1, "RVALID");
        let kc = DhchapSecret::parse(ctrl).unwrap().key_for(SUBNQN);
        let ca2 = crypto::augmented_challenge(hash, ks.as_deref(), &c2);
        let r2 = crypto::controller_response(hash, &kc, &ca2, s2, tid, SUBNQN, HOSTNQN);
        if m[16..16 + hl] != r2[..] {
            let cid = l.host.auth_send(build::failure2(tid, 1));
            h.ok(l, cid);
            return (Result_::ControllerWrong, hash, group);
        }
        let cid = l.host.auth_send(build::success2(tid));
        h.ok(l, cid);
    } else {
        assert_eq!(m[8], 0, "no RVALID when the host did not ask");
    }
    (Result_::Success, hash, group)
}

fn connect(h: &mut Harness, l: &mut Link, qid: u16, cntlid: u16) -> u64 {
    h.initialize(l);
    let cid = l
        .host
        .connect(qid, 31, 5000, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    h.ok(l, cid).0.result
}

#[test]
fn a_listed_host_must_authenticate_on_every_queue() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    let result = connect(&mut h, &mut a, 0, 0xFFFF);
    assert_ne!(result & ATR, 0, "Connect response asks for authentication");
    let cntlid = result as u16;
    // Property Get / Identify before authentication: refused.
    let cid = a.host.property_get(0x00, true);
    h.expect_status(&mut a, cid, Status::AUTHENTICATION_REQUIRED);
    let cid = a.host.identify(1, 0, 0);
    h.expect_status(&mut a, cid, Status::AUTHENTICATION_REQUIRED);
    // Default preferences with everything offered: SHA-256, ffdhe2048.
    let r = authenticate(&mut h, &mut a, HOST_SECRET, None, &[0, 1, 2, 3, 4, 5]);
    assert_eq!(r, (Result_::Success, HashId::Sha256, DhGroup::Ffdhe2048));
    let cid = a.host.enable();
    h.ok(&mut a, cid);

    let mut q = h.link(false, false);
    let result = connect(&mut h, &mut q, 1, cntlid);
    assert_ne!(result & ATR, 0, "I/O queues authenticate too");
    let cid = q.host.read(1, 0, 8, 512);
    h.expect_status(&mut q, cid, Status::AUTHENTICATION_REQUIRED);
    assert_eq!(
        authenticate(&mut h, &mut q, HOST_SECRET, None, &[0]).0,
        Result_::Success
    );
    let cid = q.host.read(1, 0, 8, 512);
    h.ok(&mut q, cid);
    assert_eq!(h.target.stats().authentications, 2);
}

#[test]
fn a_wrong_secret_gets_failure1_and_no_controller() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    let r = authenticate(&mut h, &mut a, WRONG_SECRET, None, &[0]);
    assert_eq!(r.0, Result_::Refused(0x01), "Failure1, explanation: failed");
    h.pump(&mut a);
    assert!(a.conn.wants_close(), "the connection ends");
    assert_eq!(h.target.controllers().count(), 0, "never a controller");
    assert_eq!(h.target.stats().authentication_failures, 1);
}

#[test]
fn bidirectional_with_the_controller_secret_and_a_host_that_refuses_a_wrong_one() {
    let mut h = harness(true);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    let secret = ctrl_secret();
    assert_eq!(
        authenticate(&mut h, &mut a, HOST_SECRET, Some(&secret), &[0]).0,
        Result_::Success
    );
    let cid = a.host.enable();
    h.ok(&mut a, cid);

    let mut b = h.link(false, false);
    connect(&mut h, &mut b, 0, 0xFFFF);
    // The host believes another controller secret.
    let r = authenticate(&mut h, &mut b, HOST_SECRET, Some(HOST_SECRET), &[0]);
    assert_eq!(r.0, Result_::ControllerWrong);
    h.pump(&mut b);
    assert!(b.conn.wants_close(), "Failure2 ends the queue");
    assert_eq!(
        h.target.controllers().count(),
        1,
        "only the first host's controller"
    );
}

#[test]
fn no_controller_secret_refuses_a_host_that_asks_for_bidirectional() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    let secret = ctrl_secret();
    let r = authenticate(&mut h, &mut a, HOST_SECRET, Some(&secret), &[0]);
    assert_eq!(r.0, Result_::Refused(0x01));
}

#[test]
fn every_hash_and_group_the_host_offers_works() {
    for (hash, group) in [
        (HashId::Sha384, DhGroup::Null),
        (HashId::Sha512, DhGroup::Ffdhe3072),
        (HashId::Sha256, DhGroup::Ffdhe4096),
        (HashId::Sha384, DhGroup::Ffdhe6144),
        (HashId::Sha512, DhGroup::Ffdhe8192),
    ] {
        let mut c = auth_config(true);
        c.dhchap_preferences.hashes = vec![hash];
        c.dhchap_preferences.groups = vec![group];
        let mut h = Harness::new(c);
        h.target.seed_random(b"entropy");
        let mut a = h.link(false, false);
        connect(&mut h, &mut a, 0, 0xFFFF);
        let secret = ctrl_secret();
        let r = authenticate(
            &mut h,
            &mut a,
            HOST_SECRET,
            Some(&secret),
            &[0, 1, 2, 3, 4, 5],
        );
        assert_eq!(r, (Result_::Success, hash, group));
    }
}

#[test]
fn no_common_hash_or_group_is_refused() {
    let mut c = auth_config(false);
    c.dhchap_preferences.groups = vec![DhGroup::Ffdhe8192];
    let mut h = Harness::new(c);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    let r = authenticate(&mut h, &mut a, HOST_SECRET, None, &[0, 1]);
    assert_eq!(r.0, Result_::Refused(0x05), "DH group unusable");
}

#[test]
fn re_authentication_keeps_the_queue_serving() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    assert_eq!(
        authenticate(&mut h, &mut a, HOST_SECRET, None, &[0]).0,
        Result_::Success
    );
    let cid = a.host.enable();
    h.ok(&mut a, cid);
    // The host asks again (nvme_core re-authentication): a new Negotiate.
    let cid = a.host.auth_send(build::negotiate(0x22, &[1], &[0, 1]));
    h.ok(&mut a, cid);
    let cid = a.host.identify(1, 0, 0);
    h.ok(&mut a, cid);
    let cid = a.host.auth_receive(4096);
    let (_, c) = h.ok(&mut a, cid);
    assert_eq!(c[1], message::ID_CHALLENGE);
    assert_eq!(
        authenticate(&mut h, &mut a, HOST_SECRET, None, &[0]).0,
        Result_::Success
    );
    assert_eq!(h.target.stats().authentications, 2);
}

#[test]
fn a_host_that_never_authenticates_is_closed_at_the_deadline() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    let deadline = a.conn.next_deadline(&h.target).unwrap();
    h.now = deadline.millis();
    a.conn.poll(&mut h.target, deadline);
    assert_ne!(a.conn.state(), ConnectionState::Open);
    assert_eq!(h.target.controllers().count(), 0);
    assert_eq!(h.target.stats().authentication_failures, 1);
}

#[test]
fn a_host_not_listed_connects_as_before_and_auth_commands_are_invalid() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    h.initialize(&mut a);
    let cid = a.host.connect(
        0,
        31,
        5000,
        HOSTID,
        0xFFFF,
        SUBNQN,
        "nqn.2014-08.org.nvmexpress:uuid:other",
        false,
    );
    let result = h.ok(&mut a, cid).0.result;
    assert_eq!(result & ATR, 0);
    let cid = a.host.auth_receive(4096);
    h.expect_status(&mut a, cid, Status::INVALID_OPCODE);
    let cid = a.host.enable();
    h.ok(&mut a, cid);
}

#[test]
fn malformed_messages_get_failure1() {
    let mut h = harness(false);
    let mut a = h.link(false, false);
    connect(&mut h, &mut a, 0, 0xFFFF);
    // A Reply before any Negotiate.
    let cid = a.host.auth_send(build::reply(1, 0, &[0; 32], None, &[]));
    h.ok(&mut a, cid);
    let cid = a.host.auth_receive(64);
    let (_, m) = h.ok(&mut a, cid);
    assert_eq!(
        (m[1], m[7]),
        (message::ID_FAILURE1, 0x07),
        "incorrect message"
    );
    h.pump(&mut a);
    assert!(a.conn.wants_close());
}
