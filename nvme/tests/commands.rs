//! Every command and its error statuses, through a Connection driven by the
//! host-side initiator.

mod common;

use common::*;
use tandem_nvme::host::HostEvent;
use tandem_nvme::wire::Status;
use tandem_nvme::wire::sqe::SqeBuilder;
use tandem_nvme::*;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn icresp_parameters_suit_linux() {
    let mut h = Harness::default();
    let mut l = h.link(true, true);
    h.pump(&mut l);
    match &l.events[0] {
        HostEvent::Initialized {
            maxh2cdata,
            header_digest,
            data_digest,
        } => {
            assert!(*maxh2cdata >= 4096 && maxh2cdata % 4 == 0);
            assert!(*header_digest && *data_digest);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(l.conn.state(), ConnectionState::AwaitingIcReq.max_open());
}

trait OpenState {
    fn max_open(self) -> ConnectionState;
}
impl OpenState for ConnectionState {
    fn max_open(self) -> ConnectionState {
        ConnectionState::Open
    }
}

#[test]
fn digests_not_offered_when_disabled() {
    let mut c = config();
    c.allow_header_digest = false;
    c.allow_data_digest = false;
    let mut h = Harness::new(c);
    let mut l = h.link(true, true);
    h.pump(&mut l);
    assert!(matches!(
        l.events[0],
        HostEvent::Initialized {
            header_digest: false,
            data_digest: false,
            ..
        }
    ));
}

#[test]
fn connect_allocates_cntlid_from_range_and_properties_work() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.ok(&mut l, cid);
    let cntlid = cqe.result as u16;
    assert!((0x10..=0x1F).contains(&cntlid));

    // CAP: MQES 127, CQR, TO, CSS NVM.
    let cid = l.host.property_get(0x00, true);
    let (cqe, _) = h.ok(&mut l, cid);
    assert_eq!(cqe.result & 0xFFFF, 127);
    assert!(cqe.result & (1 << 37) != 0);
    assert!((cqe.result >> 24) & 0xFF > 0);
    let cid = l.host.property_get(0x08, false);
    assert_eq!(h.ok(&mut l, cid).0.result, 0x10300);
    // Admin commands before enable: Command Sequence Error.
    let cid = l.host.simple(0x18, 0);
    h.expect_status(&mut l, cid, Status::COMMAND_SEQUENCE_ERROR);
    // Enable; CSTS.RDY.
    let cid = l.host.enable();
    h.ok(&mut l, cid);
    let cid = l.host.property_get(0x1C, false);
    assert_eq!(h.ok(&mut l, cid).0.result & 1, 1);
    let cid = l.host.property_get(0x14, false);
    assert_eq!(h.ok(&mut l, cid).0.result & 1, 1);
    // Wrong size / unknown offset / read-only register.
    let cid = l.host.property_get(0x00, false);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.property_get(0x20, false);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.property_set(0x1C, 1);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    // Shutdown: SHST complete.
    let cid = l
        .host
        .property_set(0x14, (6 << 16) | (4 << 20) | 1 | (1 << 14));
    h.ok(&mut l, cid);
    let cid = l.host.property_get(0x1C, false);
    assert_eq!((h.ok(&mut l, cid).0.result >> 2) & 3, 2);
    // Disable: RDY clears.
    let cid = l.host.property_set(0x14, 0);
    h.ok(&mut l, cid);
    let cid = l.host.property_get(0x1C, false);
    assert_eq!(h.ok(&mut l, cid).0.result & 1, 0);
    assert_eq!(h.target.controllers().count(), 1);
}

#[test]
fn enable_with_bad_queue_entry_sizes_sets_cfs() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    h.ok(&mut l, cid);
    let cid = l.host.property_set(0x14, (5 << 16) | (4 << 20) | 1);
    h.ok(&mut l, cid);
    let cid = l.host.property_get(0x1C, false);
    assert_eq!(h.ok(&mut l, cid).0.result & 3, 2, "CFS set, RDY clear");
}

#[test]
fn connect_errors() {
    let mut h = Harness::default();
    // Unknown subsystem.
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, "nqn.bogus", HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut l, cid, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, (1 << 16) | 256, "IATTR data, IPO subnqn");
    // Static controller ID on the admin queue.
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 5, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut l, cid, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, (1 << 16) | 16);
    // SQSIZE 0 and beyond MQES.
    let cid = l
        .host
        .connect(0, 0, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut l, cid, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, 44);
    let cid = l
        .host
        .connect(0, 128, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    h.expect_status(&mut l, cid, Status::CONNECT_INVALID_PARAMETERS);
    // RECFMT != 0.
    let cid = l.host.next_cid();
    let sqe = SqeBuilder::fabrics(0x01, cid)
        .u16_at(40, 1)
        .u16_at(44, 31)
        .sgl(1024, true)
        .build();
    l.host.submit(sqe, Some(vec![0; 1024]), true);
    h.expect_status(&mut l, cid, Status::CONNECT_INCOMPATIBLE_FORMAT);
    // Connect data of the wrong size.
    let cid = l.host.next_cid();
    let sqe = SqeBuilder::fabrics(0x01, cid)
        .u16_at(44, 31)
        .sgl(512, true)
        .build();
    l.host.submit(sqe, Some(vec![0; 512]), true);
    h.expect_status(&mut l, cid, Status::DATA_SGL_LENGTH_INVALID);
    // Any other command before Connect.
    let cid = l.host.simple(0x18, 0);
    h.expect_status(&mut l, cid, Status::COMMAND_SEQUENCE_ERROR);
    // A good Connect, then a second one on the same queue.
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    h.ok(&mut l, cid);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    h.expect_status(&mut l, cid, Status::COMMAND_SEQUENCE_ERROR);
    assert_eq!(l.conn.state(), ConnectionState::Open);
}

#[test]
fn refused_host_gets_connect_invalid_host() {
    let mut c = config();
    c.allowed_hosts = vec!["nqn.2014-08.org.nvmexpress:uuid:only-this-one".into()];
    let mut h = Harness::new(c);
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut l, cid, Status::CONNECT_INVALID_HOST);
    assert!(cqe.status.dnr);
    assert_eq!(cqe.result, (1 << 16) | 512);
    assert_eq!(h.target.controllers().count(), 0);
    // The discovery controller still answers, with an empty log for this host.
    let mut d = h.link(false, false);
    h.admin_for(&mut d, 0, DISCOVERY_NQN, HOSTNQN);
    let cid = d.host.get_log_page(0x70, 0, 1024, 0, 0);
    let (_, log) = h.ok(&mut d, cid);
    assert_eq!(le64(&log, 8), 0);
    // The allowed host gets in.
    let mut ok = h.link(false, false);
    h.admin_for(
        &mut ok,
        5000,
        SUBNQN,
        "nqn.2014-08.org.nvmexpress:uuid:only-this-one",
    );
}

#[test]
fn a_target_not_admitting_hosts_says_busy_until_it_does_with_the_size_it_then_has() {
    let mut h = Harness::new(config());
    h.target.set_admitting_hosts(false);
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut l, cid, Status::CONNECT_CONTROLLER_BUSY_RETRY);
    assert!(!cqe.status.dnr, "the host must retry");
    assert_eq!(h.target.controllers().count(), 0);
    // Discovery still answers.
    let mut d = h.link(false, false);
    h.admin_for(&mut d, 0, DISCOVERY_NQN, HOSTNQN);
    // The size is settled, then hosts are admitted and see it.
    h.target.set_namespace_blocks(1, NS1_BLOCKS - 8).unwrap();
    assert!(h.target.set_namespace_blocks(77, 1).is_err());
    h.target.set_admitting_hosts(true);
    let mut ok = h.link(false, false);
    h.admin(&mut ok, 5000);
    let cid = ok.host.identify(0x00, 1, 0);
    let (_, d) = h.ok(&mut ok, cid);
    assert_eq!(le64(&d, 0), NS1_BLOCKS - 8);
}

#[test]
fn cntlid_range_exhaustion_is_controller_busy() {
    let mut c = config();
    c.cntlid_min = 0x100;
    c.cntlid_max = 0x101;
    let mut h = Harness::new(c);
    let mut links = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut l = h.link(false, false);
        ids.push(h.admin(&mut l, 5000));
        links.push(l);
    }
    ids.sort();
    assert_eq!(ids, vec![0x100, 0x101]);
    let mut l = h.link(false, false);
    h.initialize(&mut l);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    h.expect_status(&mut l, cid, Status::CONNECT_CONTROLLER_BUSY);
    // Closing one frees its ID.
    let mut first = links.remove(0);
    first.conn.close(&mut h.target);
    let cid = l
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    h.ok(&mut l, cid);
}

#[test]
fn identify_controller_fields_linux_checks() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    let cntlid = h.admin(&mut l, 5000);
    let cid = l.host.identify(0x01, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(d.len(), 4096);
    assert_eq!(&d[4..11], b"SN-TEST");
    assert_eq!(d[11], b' ');
    assert_eq!(&d[24..35], b"tandem test");
    assert_eq!(d[76], 0x0B, "CMIC: multi-port, multi-controller, ANA");
    assert!(d[77] >= 5, "MDTS >= 128 KiB");
    assert_eq!(le16(&d, 78), cntlid);
    assert_eq!(le32(&d, 80), 0x10300);
    assert!(le32(&d, 92) & (1 << 11) != 0, "OAES ANA change");
    assert_eq!(d[111], 1);
    assert!(le16(&d, 320) != 0, "KAS");
    assert!(d[342] > 0, "ANATT");
    assert_eq!(d[343] & 0x1F, 0x1F, "ANACAP");
    assert_eq!(le32(&d, 344), 2, "ANAGRPMAX");
    assert_eq!(le32(&d, 348), 2, "NANAGRPID");
    assert_eq!(d[512], 0x66);
    assert_eq!(d[513], 0x44);
    assert_eq!(le16(&d, 514), 128, "MAXCMD");
    let nn = le32(&d, 516);
    let mnan = le32(&d, 540);
    assert!(mnan != 0 && mnan <= nn, "Linux rejects MNAN 0 or > NN");
    assert_eq!(le16(&d, 520) & 0b1100, 0b1100, "ONCS DSM + Write Zeroes");
    assert_eq!(d[525] & 1, 1, "VWC");
    assert_eq!(le32(&d, 536) & 3, 1, "SGLS");
    assert_eq!(&d[768..768 + SUBNQN.len()], SUBNQN.as_bytes());
    assert_eq!(d[768 + SUBNQN.len()], 0);
    assert!(le32(&d, 1792) * 16 - 64 >= 8192, "IOCCSZ");
    assert_eq!(le32(&d, 1796), 1);
    assert_eq!(le16(&d, 1800), 0, "ICDOFF must be 0 for Linux");
    // ANA log size Linux computes must fit MDTS.
    let ana_log = 16 + 2 * 32 + mnan as usize * 4;
    assert!(ana_log <= (4096usize << d[77]));
}

#[test]
fn identify_namespace_structures() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.admin(&mut l, 5000);
    let cid = l.host.identify(0x00, 1, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(le64(&d, 0), NS1_BLOCKS);
    assert_eq!(le64(&d, 8), NS1_BLOCKS);
    assert_eq!(d[30] & 1, 1, "NMIC shared");
    assert_eq!(le32(&d, 92), 1, "ANAGRPID");
    assert_eq!(&d[104..120], &[0x11; 16]);
    assert_eq!((le32(&d, 128) >> 16) & 0xFF, 9);
    let cid = l.host.identify(0x00, 2, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!((le32(&d, 128) >> 16) & 0xFF, 12, "4 KiB LBA format");
    assert_eq!(le32(&d, 92), 2);
    // Inactive NSID: zeroed; invalid NSIDs: Invalid Namespace.
    let cid = l.host.identify(0x00, 77, 0);
    assert!(h.ok(&mut l, cid).1.iter().all(|&b| b == 0));
    for nsid in [0, 0xFFFF_FFFF, 5000] {
        let cid = l.host.identify(0x00, nsid, 0);
        h.expect_status(&mut l, cid, Status::INVALID_NAMESPACE);
    }
    // Active namespace list.
    let cid = l.host.identify(0x02, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!((le32(&d, 0), le32(&d, 4), le32(&d, 8)), (1, 2, 0));
    let cid = l.host.identify(0x02, 1, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!((le32(&d, 0), le32(&d, 4)), (2, 0));
    let cid = l.host.identify(0x02, 0xFFFF_FFFE, 0);
    h.expect_status(&mut l, cid, Status::INVALID_NAMESPACE);
    // Namespace identification descriptors: NGUID, UUID, CSI.
    let cid = l.host.identify(0x03, 2, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!((d[0], d[1]), (2, 16));
    assert_eq!(&d[4..20], &[0x12; 16]);
    assert_eq!((d[20], d[21]), (3, 16));
    assert_eq!(&d[24..40], &[0x22; 16]);
    assert_eq!((d[40], d[41], d[44]), (4, 1, 0));
    assert_eq!(d[45], 0, "list ends");
    let cid = l.host.identify(0x03, 9, 0);
    h.expect_status(&mut l, cid, Status::INVALID_NAMESPACE);
    // CNS 05h/06h/07h for the NVM command set: zeroed / list; other CSI: Invalid Field.
    let cid = l.host.identify(0x06, 0, 0);
    assert!(h.ok(&mut l, cid).1.iter().all(|&b| b == 0));
    let cid = l.host.identify(0x06, 0, 2);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.identify(0x05, 1, 0);
    h.ok(&mut l, cid);
    let cid = l.host.identify(0x05, 1, 2);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.identify(0x07, 0, 0);
    assert_eq!(le32(&h.ok(&mut l, cid).1, 0), 1);
    let cid = l.host.identify(0x08, 1, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!((d[1], le32(&d, 4), d[14]), (1, 1, 1));
    // Unknown CNS values.
    for cns in [0x04, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x1C, 0x1F, 0xFF] {
        let cid = l.host.identify(cns, 1, 0);
        h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    }
    // SGL describing the wrong length.
    let cid = l.host.next_cid();
    let sqe = SqeBuilder::new(0x06, cid)
        .cdw(10, 1)
        .sgl(512, false)
        .build();
    l.host.submit(sqe, None, false);
    h.expect_status(&mut l, cid, Status::DATA_SGL_LENGTH_INVALID);
}

#[test]
fn log_pages() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.admin(&mut l, 5000);
    let cid = l.host.get_log_page(0x01, 0, 64, 0, 0xFFFF_FFFF);
    assert!(h.ok(&mut l, cid).1.iter().all(|&b| b == 0));
    let cid = l.host.get_log_page(0x02, 0, 512, 0, 0xFFFF_FFFF);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(d[3], 100);
    let cid = l.host.get_log_page(0x03, 0, 512, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(d[0], 1);
    let cid = l.host.get_log_page(0x04, 0, 4096, 0, 0);
    assert!(h.ok(&mut l, cid).1.iter().all(|&b| b == 0));
    let cid = l.host.get_log_page(0x05, 0, 4096, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(le32(&d, 0x06 * 4) & 1, 1, "Identify supported");
    assert_eq!(le32(&d, 1024 + 4) & 3, 3, "Write: CSUPP + LBCC");
    assert_eq!(le32(&d, 1024 + 2 * 4) & 3, 1, "Read: CSUPP");
    assert_eq!(le32(&d, 0x80 * 4), 0, "Format NVM not supported");
    // ANA log: two groups, optimized, with their namespaces.
    let cid = l.host.get_log_page(0x0C, 0, 4096, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    let chg = le64(&d, 0);
    assert!(chg > 0);
    assert_eq!(le16(&d, 8), 2);
    assert_eq!(
        (le32(&d, 16), le32(&d, 20), d[32], le32(&d, 48)),
        (1, 1, 1, 1)
    );
    assert_eq!(
        (le32(&d, 52), le32(&d, 56), d[68], le32(&d, 84)),
        (2, 1, 1, 2)
    );
    // RGO: groups only.
    let cid = l.host.get_log_page(0x0C, 1, 4096, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!((le32(&d, 20), le32(&d, 48)), (0, 2));
    // Offset and partial reads.
    let cid = l.host.get_log_page(0x0C, 0, 8, 8, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(le16(&d, 0), 2);
    // nvme-cli reads the ANA log in 4 KiB pieces of the size Identify
    // implies (header + NANAGRPID descriptors + MNAN NSIDs): the piece past
    // the present content reads as zeros, up to that size and no further.
    let max_len = 16 + 2 * 32 + 1024 * 4;
    let cid = l
        .host
        .get_log_page(0x0C, 0, (max_len - 4096) as u32, 4096, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert!(d.len() == max_len - 4096 && d.iter().all(|&b| b == 0));
    let cid = l.host.get_log_page(0x0C, 0, 8, max_len as u64 + 4, 0);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.get_log_page(0x0C, 0, 8, 1 << 20, 0);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.get_log_page(0x0C, 0, 8, 2, 0);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    // Unsupported pages; discovery log on an NVM controller.
    for lid in [0x06, 0x07, 0x08, 0x70, 0x80, 0xC0] {
        let cid = l.host.get_log_page(lid, 0, 512, 0, 0);
        h.expect_status(&mut l, cid, Status::INVALID_LOG_PAGE);
    }
    // Longer than MDTS.
    let cid = l.host.get_log_page(0x02, 0, 1 << 20, 0, 0);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
}

#[test]
fn discovery_controller_and_log() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    let cntlid = h.admin_for(&mut l, 0, DISCOVERY_NQN, HOSTNQN);
    assert!(
        h.target.controllers().any(|c| c.cntlid == cntlid
            && c.subsystem == SubsystemKind::Discovery
            && c.kato_ms > 0)
    );
    let cid = l.host.identify(0x01, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(d[111], 2, "CNTRLTYPE discovery");
    assert_eq!(&d[768..768 + DISCOVERY_NQN.len()], DISCOVERY_NQN.as_bytes());
    assert_eq!(le16(&d, 78), cntlid);
    // Header first, as nvme-cli does, then the whole log.
    let cid = l.host.get_log_page(0x70, 0, 16, 0, 0);
    let (_, hdr) = h.ok(&mut l, cid);
    let numrec = le64(&hdr, 8);
    assert_eq!(numrec, 2, "this node's portal and the peer's");
    let cid = l.host.get_log_page(0x70, 0, 1024 * 3, 0, 0);
    let (_, d) = h.ok(&mut l, cid);
    assert_eq!(le64(&d, 0), le64(&hdr, 0), "generation counter stable");
    let e1 = tandem_nvme::host::discovery_entry_fields(&d[1024..2048]).unwrap();
    let e2 = tandem_nvme::host::discovery_entry_fields(&d[2048..3072]).unwrap();
    assert_eq!(e1, (2, "4420".into(), SUBNQN.into(), "10.0.0.1".into()));
    assert_eq!(e2, (2, "4420".into(), SUBNQN.into(), "10.0.0.2".into()));
    assert_eq!(d[1024], 3, "TCP");
    assert_eq!(d[1025], 1, "IPv4");
    assert_eq!(le16(&d, 1024 + 6), 0xFFFF);
    // NVM-only things are refused on a discovery controller.
    let cid = l.host.identify(0x00, 1, 0);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.get_log_page(0x0C, 0, 4096, 0, 0);
    h.expect_status(&mut l, cid, Status::INVALID_LOG_PAGE);
    let cid = l.host.set_features(0x07, 0);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.simple(0x08, 0);
    h.expect_status(&mut l, cid, Status::INVALID_OPCODE);
    // No I/O queues on the discovery subsystem.
    let mut q = h.link(false, false);
    h.initialize(&mut q);
    let cid = q
        .host
        .connect(1, 31, 0, HOSTID, cntlid, DISCOVERY_NQN, HOSTNQN, false);
    h.expect_status(&mut q, cid, Status::CONNECT_INVALID_PARAMETERS);
    // Peer portals can be replaced; the generation counter moves.
    h.target.set_peer_portals(vec![]);
    let cid = l.host.get_log_page(0x70, 0, 16, 0, 0);
    let (_, hdr2) = h.ok(&mut l, cid);
    assert_eq!(le64(&hdr2, 8), 1);
    assert!(le64(&hdr2, 0) > le64(&hdr, 0));
}

#[test]
fn features() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.admin(&mut l, 5000);
    // Number of queues: granted min(asked, max) 0's based.
    let cid = l.host.set_features(0x07, 99 | (99 << 16));
    let (cqe, _) = h.ok(&mut l, cid);
    assert_eq!(cqe.result, 15 | (15 << 16));
    let cid = l.host.get_features(0x07, 0);
    assert_eq!(h.ok(&mut l, cid).0.result, 15 | (15 << 16));
    let cid = l.host.set_features(0x07, 0xFFFF);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    let cid = l.host.set_features(0x07, 1 | (1 << 16));
    assert_eq!(h.ok(&mut l, cid).0.result, 1 | (1 << 16));
    // Async event configuration keeps only what is supported.
    let cid = l.host.set_features(0x0B, 0xFFFF_FFFF);
    h.ok(&mut l, cid);
    let cid = l.host.get_features(0x0B, 0);
    assert_eq!(h.ok(&mut l, cid).0.result, 1 << 11);
    // Keep-alive timer.
    let cid = l.host.set_features(0x0F, 7000);
    h.ok(&mut l, cid);
    let cid = l.host.get_features(0x0F, 0);
    assert_eq!(h.ok(&mut l, cid).0.result, 7000);
    assert!(h.target.controllers().any(|c| c.kato_ms == 7000));
    // Volatile write cache.
    let cid = l.host.get_features(0x06, 0);
    assert_eq!(h.ok(&mut l, cid).0.result, 1);
    let cid = l.host.set_features(0x06, 0);
    h.ok(&mut l, cid);
    let cid = l.host.get_features(0x06, 0);
    assert_eq!(h.ok(&mut l, cid).0.result, 0);
    let cid = l.host.get_features(0x06, 1);
    assert_eq!(h.ok(&mut l, cid).0.result, 1, "default");
    let cid = l.host.get_features(0x06, 3);
    assert_eq!(h.ok(&mut l, cid).0.result, 4, "changeable");
    let cid = l.host.get_features(0x06, 5);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    // Save: not saveable. Unknown features: Invalid Field.
    let cid = l.host.set_features(0x0F, 1000);
    h.ok(&mut l, cid);
    let cid = l.host.next_cid();
    l.host.submit(
        SqeBuilder::new(0x09, cid)
            .cdw(10, 0x0F | (1 << 31))
            .cdw(11, 1)
            .build(),
        None,
        false,
    );
    h.expect_status(&mut l, cid, Status::FEATURE_NOT_SAVEABLE);
    for fid in [0x01, 0x02, 0x04, 0x08, 0x0C, 0x0E, 0x7F, 0x80] {
        let cid = l.host.set_features(fid, 0);
        h.expect_status(&mut l, cid, Status::INVALID_FIELD);
        let cid = l.host.get_features(fid, 0);
        h.expect_status(&mut l, cid, Status::INVALID_FIELD);
    }
}

#[test]
fn no_volatile_write_cache_means_no_vwc_feature() {
    let mut c = config();
    c.volatile_write_cache = false;
    let mut h = Harness::new(c);
    let mut l = h.link(false, false);
    h.admin(&mut l, 5000);
    let cid = l.host.identify(1, 0, 0);
    assert_eq!(h.ok(&mut l, cid).1[525], 0);
    let cid = l.host.set_features(0x06, 1);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
}

#[test]
fn other_admin_commands() {
    let mut h = Harness::default();
    let mut l = h.link(false, false);
    h.admin(&mut l, 5000);
    let cid = l.host.simple(0x18, 0);
    h.ok(&mut l, cid);
    let cid = l.host.simple(0x08, 0);
    assert_eq!(h.ok(&mut l, cid).0.result & 1, 1, "Abort: not aborted");
    for op in [0x00, 0x01, 0x04, 0x05, 0x10, 0x11, 0x80, 0x81, 0x84, 0xC0] {
        let cid = l.host.simple(op, 0);
        h.expect_status(&mut l, cid, Status::INVALID_OPCODE);
    }
    // Unknown fabrics command type.
    let cid = l.host.next_cid();
    l.host
        .submit(SqeBuilder::fabrics(0x7E, cid).build(), None, false);
    h.expect_status(&mut l, cid, Status::INVALID_OPCODE);
    // Disconnect is for I/O queues.
    let cid = l.host.next_cid();
    l.host
        .submit(SqeBuilder::fabrics(0x08, cid).build(), None, false);
    h.expect_status(&mut l, cid, Status::INVALID_FIELD);
}

#[test]
fn io_queue_connect_rules() {
    let mut h = Harness::default();
    let mut a = h.link(false, false);
    let cntlid = h.admin(&mut a, 5000);
    let cid = a.host.set_features(0x07, 1 | (1 << 16));
    h.ok(&mut a, cid);
    // qid beyond the granted count.
    let mut q = h.link(false, false);
    h.initialize(&mut q);
    let cid = q
        .host
        .connect(3, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut q, cid, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, 42);
    // Unknown controller / another host's controller.
    let cid = q
        .host
        .connect(1, 127, 0, HOSTID, 0x1F, SUBNQN, HOSTNQN, false);
    let (cqe, _) = h.expect_status(&mut q, cid, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(cqe.result, (1 << 16) | 16);
    let cid = q
        .host
        .connect(1, 127, 0, HOSTID, cntlid, SUBNQN, "nqn.other-host", false);
    h.expect_status(&mut q, cid, Status::CONNECT_INVALID_PARAMETERS);
    let cid = q
        .host
        .connect(1, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    h.ok(&mut q, cid);
    // The same qid twice.
    let mut q2 = h.link(false, false);
    h.initialize(&mut q2);
    let cid = q2
        .host
        .connect(1, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    h.expect_status(&mut q2, cid, Status::COMMAND_SEQUENCE_ERROR);
    let cid = q2
        .host
        .connect(2, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    h.ok(&mut q2, cid);
    let info: Vec<_> = h
        .target
        .controllers()
        .map(|c| c.io_queues.to_vec())
        .collect();
    assert_eq!(info, vec![vec![1, 2]]);
    // Number of queues cannot change once I/O queues exist.
    let cid = a.host.set_features(0x07, 3 | (3 << 16));
    h.expect_status(&mut a, cid, Status::COMMAND_SEQUENCE_ERROR);
    // Property commands are admin-queue only; Disconnect closes an I/O queue.
    let cid = q.host.property_get(0x1C, false);
    h.expect_status(&mut q, cid, Status::INVALID_FIELD);
    let cid = q2.host.next_cid();
    q2.host
        .submit(SqeBuilder::fabrics(0x08, cid).build(), None, false);
    h.ok(&mut q2, cid);
    assert!(q2.conn.wants_close());
    q2.conn.close(&mut h.target);
    let info: Vec<_> = h
        .target
        .controllers()
        .map(|c| c.io_queues.to_vec())
        .collect();
    assert_eq!(info, vec![vec![1]]);
    // Closing the admin queue removes the controller; its I/O queue closes.
    a.conn.close(&mut h.target);
    assert_eq!(h.target.controllers().count(), 0);
    q.host.simple(0x00, 1);
    h.pump(&mut q);
    assert_eq!(q.conn.state(), ConnectionState::Closed);
    let mut removed = false;
    while let Some(e) = h.target.poll_event() {
        removed |= matches!(
            e,
            TargetEvent::ControllerRemoved {
                reason: RemovalReason::AdminQueueClosed,
                ..
            }
        );
    }
    assert!(removed);
}

#[test]
fn io_queue_needs_enabled_controller() {
    let mut h = Harness::default();
    let mut a = h.link(false, false);
    h.initialize(&mut a);
    let cid = a
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    let cntlid = h.ok(&mut a, cid).0.result as u16;
    let mut q = h.link(false, false);
    h.initialize(&mut q);
    let cid = q
        .host
        .connect(1, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
    h.expect_status(&mut q, cid, Status::COMMAND_SEQUENCE_ERROR);
}
