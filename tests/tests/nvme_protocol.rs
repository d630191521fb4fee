//! NVMe/TCP at protocol level against the booted image: a host-side
//! initiator (tandem-nvme's `host` feature over std sockets) talks to the
//! target through QEMU's port forwards.
//!
//! One VM serves most cases, in an order where each leaves the target usable
//! for the next; the identity test boots two more small VMs side by side.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tandem_nvme::Crc32c;
use tandem_nvme::wire::pdu::{self, flags};
use tandem_nvme::wire::sqe::SqeBuilder;
use tandem_nvme::wire::{DataHeader, IcReq, Repr};
use tandem_qemu::{ConsoleClient, Node, TempDir, disk, free_port};
use tandem_tests::nvme::*;
use tandem_tests::{COMMAND_TIMEOUT, READY_TIMEOUT, tcg_vm, user_nic};

const NQN: &str = "nqn.2026-11.io.tandem:protocol-test";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:protocol-test-host";
/// Allowed as well; its controller is left to time out.
const SILENT_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:silent-host";
const REFUSED_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:someone-else";
const NGUID: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
];
const DISK_BYTES: u64 = 16 << 20;
const BLOCKS: u64 = DISK_BYTES / 512;
/// Fatal error statuses of C2HTermReq.
const FES_INVALID_HEADER_FIELD: u16 = 1;
const FES_PDU_SEQUENCE: u16 = 2;
const FES_HEADER_DIGEST: u16 = 3;
const FES_OUT_OF_RANGE: u16 = 4;
const FES_LIMIT_EXCEEDED: u16 = 5;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The booted target and the host side's handles on it.
struct Rig {
    node: Node,
    console: ConsoleClient,
    io_port: u16,
    discovery_port: u16,
    disk: File,
    _dir: TempDir,
}

/// A started VM and the host side's handles on it, not yet ready.
struct Booting {
    node: Node,
    io_port: u16,
    discovery_port: u16,
    disk: File,
    dir: TempDir,
}

fn spawn(name: &str, cmdline: &str, disk_bytes: u64) -> Booting {
    let dir = TempDir::new(name).unwrap();
    let path = dir.path().join("disk0.img");
    disk::create_sparse(&path, disk_bytes).unwrap();
    let io_port = free_port().unwrap();
    let discovery_port = free_port().unwrap();
    let spec = tcg_vm(name, dir.path(), cmdline)
        .disk(&path)
        .nic(0, user_nic(&[(io_port, 4420), (discovery_port, 8009)]));
    Booting {
        node: Node::spawn(spec).unwrap(),
        io_port,
        discovery_port,
        disk: File::open(&path).unwrap(),
        dir,
    }
}

impl Booting {
    fn ready(mut self) -> Rig {
        self.node.wait_ready(READY_TIMEOUT).unwrap();
        let console = self.node.console(COMMAND_TIMEOUT).unwrap();
        wait_listening(self.io_port);
        wait_listening(self.discovery_port);
        Rig {
            node: self.node,
            console,
            io_port: self.io_port,
            discovery_port: self.discovery_port,
            disk: self.disk,
            _dir: self.dir,
        }
    }
}

/// The ready line can come before the NVMe listeners take connections, and
/// QEMU's port forward accepts (then closes) connections meanwhile: retry
/// until an ICReq gets its ICResp.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match Queue::try_open(port, false, false) {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no ICResp on 127.0.0.1:{port}: {e:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On a failure, the guest's last words go with the panic message.
impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.node.console_log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- console of {} (last lines) ---\n{}",
                self.node.spec().name,
                tail.join("\n")
            );
        }
    }
}

impl Rig {
    fn console(&mut self, command: &str) -> Vec<String> {
        self.console
            .command(command, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("console `{command}`: {e}\n{}", self.node.console_log()))
    }
}

#[test]
fn nvme_tcp_protocol_against_the_image() {
    let cmdline = format!(
        "nqn={NQN} nguid={} hosts={HOST},{SILENT_HOST} peer=10.9.8.7,10.9.8.6:4430 cntlid=10-19",
        hex(&NGUID)
    );
    let mut rig = spawn("nvme-protocol", &cmdline, DISK_BYTES).ready();
    let started = Instant::now();

    let mut last = Instant::now();
    let mut step = |name: &str| {
        eprintln!("nvme_protocol: {name}: {:?}", last.elapsed());
        last = Instant::now();
    };
    icresp_fields(&rig);
    step("ICResp");
    let (mut admin, cntlid) = Queue::admin(rig.io_port, NQN, HOST, 0);
    assert!(
        (10..=19).contains(&cntlid),
        "CNTLID {cntlid} from cntlid=10-19"
    );
    identify_fields(&mut admin, cntlid);
    step("Identify");
    let mut queues = io_queues(&rig, &mut admin, cntlid);
    io_and_statuses(&rig, &mut queues);
    step("I/O");
    device_interrupts_end_once(&mut rig, &mut queues[0]);
    step("interrupts");
    disk_notifications_come_per_batch(&mut rig, &mut queues[0]);
    step("disk notifications");
    discovery_log(&rig);
    refused_host(&rig);
    step("discovery, refused host");
    bad_input(&rig, &mut queues[0]);
    step("bad input");
    trickled_pdus(&rig);
    step("trickled PDUs");
    abandoned_and_idle_connections(&mut rig, &mut queues[0]);
    step("abandoned and idle connections");
    keep_alive_enforced(&mut rig);
    step("keep-alive");
    ana_change(&mut rig, &mut admin, &mut queues);
    step("ANA change");
    eprintln!("nvme protocol cases took {:?}", started.elapsed());
}

/// ICResp, read raw: PFV 0, CPDA 0, MAXH2CDATA ≥ 4096 and a multiple of 4,
/// digests as requested.
fn icresp_fields(rig: &Rig) {
    for digests in [false, true] {
        let mut q = Queue::unopened(rig.io_port, digests, digests);
        q.flush().unwrap();
        let mut resp = [0u8; 128];
        std::io::Read::read_exact(q.stream(), &mut resp).expect("a 128-byte ICResp");
        assert_eq!(resp[0], 0x01, "PDU type ICResp");
        assert_eq!((resp[2], le32(&resp, 4)), (128, 128), "HLEN and PLEN");
        assert_eq!(le16(&resp, 8), 0, "PFV");
        assert_eq!(resp[10], 0, "CPDA");
        assert_eq!(resp[11], if digests { 3 } else { 0 }, "DGST as requested");
        let maxh2cdata = le32(&resp, 12);
        assert!(
            maxh2cdata >= 4096 && maxh2cdata.is_multiple_of(4),
            "MAXH2CDATA {maxh2cdata}"
        );
    }
}

/// Identify controller fields that Linux multipath and ANA depend on, and
/// the namespace's identity from configuration.
fn identify_fields(admin: &mut Queue, cntlid: u16) {
    let id = admin.identify(1, 0);
    assert_eq!(le16(&id, 78), cntlid, "CNTLID");
    let cmic = id[76];
    assert_eq!(
        cmic & 0b1011,
        0b1011,
        "CMIC multi-port, multi-controller, ANA: {cmic:#x}"
    );
    let mdts = id[77];
    assert!(mdts >= 5, "MDTS {mdts} (2^MDTS × 4 KiB ≥ 128 KiB)");
    let oaes = le32(&id, 92);
    assert_ne!(oaes & (1 << 11), 0, "OAES ANA change notice: {oaes:#x}");
    assert_ne!(le16(&id, 320), 0, "KAS");
    assert_ne!(id[342], 0, "ANATT");
    let anacap = id[343];
    assert_eq!(
        anacap & 0b111,
        0b111,
        "ANACAP: optimized, non-optimized, inaccessible: {anacap:#x}"
    );
    let (anagrpmax, nanagrpid) = (le32(&id, 344), le32(&id, 348));
    assert!(
        anagrpmax >= 1 && nanagrpid >= 1 && nanagrpid <= anagrpmax,
        "ANAGRPMAX {anagrpmax} NANAGRPID {nanagrpid}"
    );
    let ioccsz = le32(&id, 1792);
    assert!(
        ioccsz * 16 >= 64 + 8192,
        "IOCCSZ {ioccsz} × 16 B holds 8 KiB of in-capsule data"
    );
    assert_eq!(text(&id[768..1024]), NQN, "SUBNQN");

    let ns = admin.identify(0, 1);
    assert_eq!(
        le64(&ns, 0),
        BLOCKS,
        "NSZE of the 16 MiB disk in 512 B blocks"
    );
    assert_eq!(ns[30] & 1, 1, "NMIC: shared namespace");
    assert_eq!(le32(&ns, 92), 1, "ANAGRPID");
    assert_eq!(ns[104..120], NGUID, "NGUID from nguid=");
    let descriptors = ns_descriptors(&admin.identify(3, 1));
    let nguid = descriptors
        .iter()
        .find(|d| d.0 == 2)
        .expect("an NGUID descriptor");
    assert_eq!(nguid.1, NGUID, "NGUID descriptor");
    let uuid = descriptors
        .iter()
        .find(|d| d.0 == 3)
        .expect("a UUID descriptor");
    assert_eq!(uuid.1.len(), 16);
    assert_ne!(uuid.1, vec![0; 16], "UUID set");
}

/// Two I/O queues, the second with header and data digests.
fn io_queues(rig: &Rig, admin: &mut Queue, cntlid: u16) -> Vec<Queue> {
    let cid = admin.host.set_features(0x07, 1 | (1 << 16));
    let (cqe, _) = admin.ok(cid);
    assert!(
        cqe.result & 0xFFFF >= 1 && cqe.result >> 16 >= 1,
        "queues granted: {:#x}",
        cqe.result
    );
    let q1 = Queue::io(rig.io_port, 1, cntlid, NQN, HOST, false);
    let q2 = Queue::io(rig.io_port, 2, cntlid, NQN, HOST, true);
    assert_eq!(
        (q2.icresp.1, q2.icresp.2),
        (true, true),
        "digests negotiated"
    );
    vec![q1, q2]
}

fn io_and_statuses(rig: &Rig, queues: &mut [Queue]) {
    for (index, q) in queues.iter_mut().enumerate() {
        let base = 1000 + index as u64 * 2000;
        // 4 KiB in the capsule, 128 KiB solicited by R2T, outstanding together.
        let small = pattern(4096, 11 + index as u8);
        let large = pattern(128 * 1024, 22 + index as u8);
        let w1 = q.host.write(1, base, small.clone(), 512, true);
        let w2 = q.host.write(1, base + 8, large.clone(), 512, false);
        q.ok(w1);
        q.ok(w2);
        let r1 = q.host.read(1, base, 8, 512);
        let r2 = q.host.read(1, base + 8, 256, 512);
        assert_eq!(q.ok(r1).1, small, "4 KiB read back on queue {}", index + 1);
        assert_eq!(
            q.ok(r2).1,
            large,
            "128 KiB read back on queue {}",
            index + 1
        );

        // What a completed write reported is in the disk file on the host.
        let mut file = vec![0u8; small.len() + large.len()];
        rig.disk.read_exact_at(&mut file, base * 512).unwrap();
        assert_eq!(file[..4096], small[..], "4 KiB write in the disk file");
        assert_eq!(file[4096..], large[..], "128 KiB write in the disk file");

        let past_end = q.host.read(1, BLOCKS - 4, 8, 512);
        assert_eq!(
            q.status(past_end),
            Status::LBA_OUT_OF_RANGE,
            "read past the end"
        );
        let past_end = q.host.write(1, BLOCKS, vec![1; 512], 512, true);
        assert_eq!(
            q.status(past_end),
            Status::LBA_OUT_OF_RANGE,
            "write past the end"
        );
        let cid = q.host.next_cid();
        q.host
            .submit(SqeBuilder::new(0x7E, cid).nsid(1).build(), None, false);
        assert_eq!(q.status(cid), Status::INVALID_OPCODE, "opcode 7Eh");
    }
}

/// The line of `status` that starts with `prefix`.
fn status_line<'a>(status: &'a [String], prefix: &str) -> &'a str {
    status
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {status:#?}"))
}

/// Loop rounds per IRQ line from `status` (`wakeups=… irq11=…`): those of
/// device lines, and those of IRQ 15, where the slave PIC's spurious
/// interrupts land.
fn interrupt_rounds(status: &[String]) -> (u64, u64) {
    let line = status_line(status, "wakeups=");
    let (mut device, mut spurious) = (0, 0);
    for field in line.split_whitespace().skip(1) {
        let (name, value) = field.split_once('=').unwrap_or_else(|| panic!("{line}"));
        let value: u64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        match name {
            // The tick and the UART are on the master PIC.
            "irq0" | "irq4" => {}
            "irq15" => spurious += value,
            _ => device += value,
        }
    }
    (device, spurious)
}

/// Each device interrupt is taken once. Ending it at the PIC before the
/// device was acknowledged makes the slave PIC signal the master again, and
/// every device interrupt is then followed by a spurious IRQ 15 and a
/// wasted round of the loop.
///
/// And receive buffers go back to the NIC without a notification (a VM exit)
/// each: the device asks for one only once it ran out, which 256 buffers
/// never do here. Deciding by "past the device's event index" instead of
/// "across it" notified once per received frame.
fn device_interrupts_end_once(rig: &mut Rig, q: &mut Queue) {
    let before = rig.console("status");
    let (device_before, spurious_before) = interrupt_rounds(&before);
    let (frames_before, notifies_before) = received_and_receive_notifications(&before);
    for i in 0..200u64 {
        let cid = q
            .host
            .write(1, 6000 + i * 8, pattern(4096, i as u8), 512, true);
        q.ok(cid);
    }
    let after = rig.console("status");
    let (device_after, spurious_after) = interrupt_rounds(&after);
    let (device, spurious) = (
        device_after - device_before,
        spurious_after - spurious_before,
    );
    assert!(
        device >= 200,
        "200 writes took only {device} device interrupts"
    );
    assert!(
        spurious * 10 < device,
        "{spurious} spurious IRQ 15 against {device} device interrupts"
    );
    let (frames_after, notifies_after) = received_and_receive_notifications(&after);
    let (frames, notifies) = (
        frames_after - frames_before,
        notifies_after - notifies_before,
    );
    assert!(
        frames >= 200,
        "200 write capsules came in only {frames} frames"
    );
    assert!(
        notifies * 10 < frames,
        "{notifies} receive-queue notifications for {frames} received frames"
    );
}

/// The disk is told of new requests once per batch, by the specification's
/// event-index rule: 16 rounds of 32 writes submitted at once reach the
/// disk in far fewer notifications (VM exits) than requests. (QEMU under
/// TCG takes a notification at once and asks for the next: the rule then
/// decides as "past the device's event index" would; a device that works
/// on its queue in its own thread does not ask again so soon.)
fn disk_notifications_come_per_batch(rig: &mut Rig, q: &mut Queue) {
    let before = rig.console("status");
    let (requests_before, notifies_before) = disk_requests_and_notifications(&before);
    for round in 0..16u64 {
        let cids: Vec<u16> = (0..32u64)
            .map(|i| {
                q.host.write(
                    1,
                    12000 + (round * 32 + i) * 8,
                    pattern(4096, i as u8),
                    512,
                    false,
                )
            })
            .collect();
        for cid in cids {
            q.ok(cid);
        }
    }
    let after = rig.console("status");
    let (requests_after, notifies_after) = disk_requests_and_notifications(&after);
    let (requests, notifies) = (
        requests_after - requests_before,
        notifies_after - notifies_before,
    );
    eprintln!("disk: {notifies} notifications for {requests} requests");
    assert!(
        requests >= 512,
        "512 writes reached the disk as only {requests} requests"
    );
    assert!(
        notifies * 4 < requests,
        "{notifies} notifications for {requests} disk requests"
    );
}

/// Requests handed to disk0 (reads, writes, flushes, zeroes, discards) and
/// notifications sent to it (`notifies=`), from `status`.
fn disk_requests_and_notifications(status: &[String]) -> (u64, u64) {
    let line = status
        .iter()
        .find(|l| l.contains("flush_overlaps="))
        .unwrap_or_else(|| panic!("no disk counters in {status:#?}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let requests = ["reads=", "writes=", "flushes=", "zeroes=", "discards="]
        .iter()
        .map(|f| field(f))
        .sum();
    (requests, field("notifies="))
}

/// net0's received frames (`rx=N/…B`) and receive-queue notifications
/// (`notifies=R/T`) from `status`.
fn received_and_receive_notifications(status: &[String]) -> (u64, u64) {
    let line = status_line(status, "net0 ");
    let field = |name: &str| -> u64 {
        let value = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        value
            .split('/')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    (field("rx="), field("notifies="))
}

/// The discovery log lists this node's portal and the `peer=` portals.
fn discovery_log(rig: &Rig) {
    let (mut q, _) = Queue::admin(rig.discovery_port, DISCOVERY_NQN, HOST, 0);
    let header = q.log_page(0x70, 1024);
    let records = le64(&header, 8) as usize;
    assert_eq!(records, 3, "one portal of this node and two of the peer");
    let log = q.log_page(0x70, 1024 * (1 + records as u32));
    let mut entries: Vec<(String, String, String)> = (0..records)
        .map(|i| {
            let entry = &log[1024 * (i + 1)..1024 * (i + 2)];
            assert_eq!((entry[0], entry[1]), (3, 1), "TCP over IPv4");
            let (subtype, service, subnqn, address) =
                tandem_nvme::host::discovery_entry_fields(entry).unwrap();
            assert_eq!(subtype, 2, "an NVM subsystem entry");
            (address, service, subnqn)
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("10.0.2.15".into(), "4420".into(), NQN.into()),
            ("10.9.8.6".into(), "4430".into(), NQN.into()),
            ("10.9.8.7".into(), "4420".into(), NQN.into()),
        ]
    );
}

/// A host missing from `hosts=` is refused with Connect Invalid Host.
fn refused_host(rig: &Rig) {
    let mut q = Queue::open(rig.io_port, false, false);
    let (status, _) = q.connect(0, 0xFFFF, 0, NQN, REFUSED_HOST);
    assert_eq!(status, Status::CONNECT_INVALID_HOST);
}

fn encode(repr: &Repr, data: &[u8], hdgst: bool, ddgst: bool) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode(repr, data, hdgst, ddgst, &Crc32c::default(), &mut out);
    out
}

/// Each bad PDU ends its own connection with the right C2HTermReq; the
/// established queue `healthy` goes on doing I/O.
fn bad_input(rig: &Rig, healthy: &mut Queue) {
    // A PDU type no one defined.
    let mut q = Queue::open(rig.io_port, false, false);
    q.send_raw(&[0x0A, 0, 8, 0, 8, 0, 0, 0]).unwrap();
    assert_eq!(
        q.expect_termination(),
        (FES_INVALID_HEADER_FIELD, 0),
        "unknown PDU type"
    );

    // A CapsuleCmd whose PLEN announces 1 GiB of in-capsule data.
    let mut q = Queue::open(rig.io_port, false, false);
    let mut capsule = encode(&Repr::CapsuleCmd([0; 64]), &[], false, false);
    capsule[3] = 72; // PDO: data right after the header
    capsule[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    q.send_raw(&capsule).unwrap();
    assert_eq!(
        q.expect_termination().0,
        FES_LIMIT_EXCEEDED,
        "oversized PLEN"
    );

    // A command before the ICReq, and a second ICReq.
    let mut q = Queue::unopened(rig.io_port, false, false);
    q.host.take_output();
    q.send_raw(&encode(&Repr::CapsuleCmd([0; 64]), &[], false, false))
        .unwrap();
    assert_eq!(
        q.expect_termination().0,
        FES_PDU_SEQUENCE,
        "CapsuleCmd before ICReq"
    );
    let mut q = Queue::open(rig.io_port, false, false);
    let icreq = IcReq {
        pfv: 0,
        hpda: 0,
        digest: 0,
        maxr2t: 0,
    };
    q.send_raw(&encode(&Repr::IcReq(icreq), &[], false, false))
        .unwrap();
    assert_eq!(q.expect_termination().0, FES_PDU_SEQUENCE, "second ICReq");

    // H2CData that skips ahead of what the R2T asked for.
    let (_admin, cntlid) = Queue::admin(rig.io_port, NQN, HOST, 0);
    let mut io = Queue::io(rig.io_port, 1, cntlid, NQN, HOST, false);
    let cid = io.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(12, 15)
        .sgl(8192, false)
        .build();
    io.host.submit(sqe, None, false);
    io.flush().unwrap();
    let r2t = io.next_event(Instant::now() + REPLY_TIMEOUT).unwrap();
    let HostEvent::R2T { length, .. } = r2t else {
        panic!("expected an R2T, got {r2t:?}")
    };
    assert_eq!(length, 8192, "one R2T for all the data");
    // (The target's transfer tag is the command ID.)
    let data = DataHeader {
        cccid: cid,
        ttag: cid,
        offset: 4096,
        length: 4096,
        last: true,
        success: false,
    };
    io.send_raw(&encode(&Repr::H2CData(data), &[0; 4096], false, false))
        .unwrap();
    assert_eq!(
        io.expect_termination().0,
        FES_OUT_OF_RANGE,
        "H2CData out of order"
    );

    // A data digest that does not match fails that command only (Transient
    // Transport Error, retryable); the queue goes on.
    let mut io = Queue::io(rig.io_port, 2, cntlid, NQN, HOST, true);
    let cid = io.host.write(1, 300, pattern(4096, 8), 512, true);
    let mut capsule = io.host.take_output();
    let last = capsule.len() - 1;
    capsule[last] ^= 0x5A;
    io.send_raw(&capsule).unwrap();
    assert_eq!(
        io.status(cid),
        Status::TRANSIENT_TRANSPORT_ERROR,
        "data digest mismatch"
    );
    let cid = io.host.write(1, 300, pattern(4096, 8), 512, true);
    io.ok(cid);

    // A header digest that does not match.
    let mut q = Queue::open(rig.io_port, true, false);
    let mut capsule = encode(
        &Repr::CapsuleCmd(SqeBuilder::new(0x18, 1).build()),
        &[],
        true,
        false,
    );
    assert_ne!(capsule[1] & flags::HDGSTF, 0);
    let last = capsule.len() - 1;
    capsule[last] ^= 0x5A;
    q.send_raw(&capsule).unwrap();
    assert_eq!(
        q.expect_termination().0,
        FES_HEADER_DIGEST,
        "header digest mismatch"
    );

    let cid = healthy.host.write(1, 100, pattern(4096, 5), 512, true);
    healthy.ok(cid);
    let cid = healthy.host.read(1, 100, 8, 512);
    assert_eq!(
        healthy.ok(cid).1,
        pattern(4096, 5),
        "the healthy queue still does I/O"
    );
}

/// Sends `bytes` one byte per TCP segment (paced, Nagle off).
fn trickle(q: &mut Queue, bytes: &[u8]) {
    for byte in bytes {
        q.stream().write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// ICReq, admin Connect, I/O Connect and a 512 B write, each trickled one
/// byte at a time.
fn trickled_pdus(rig: &Rig) {
    let mut admin = Queue::unopened(rig.io_port, true, true);
    let icreq = admin.host.take_output();
    trickle(&mut admin, &icreq);
    let ev = admin.next_event(Instant::now() + REPLY_TIMEOUT).unwrap();
    assert!(
        matches!(
            ev,
            HostEvent::Initialized {
                header_digest: true,
                data_digest: true,
                ..
            }
        ),
        "{ev:?}"
    );
    let cid = admin
        .host
        .connect(0, 31, 0, HOST_ID, 0xFFFF, NQN, HOST, false);
    let connect = admin.host.take_output();
    trickle(&mut admin, &connect);
    let cntlid = admin.ok(cid).0.result as u16;
    let cid = admin.host.enable();
    admin.ok(cid);

    let mut q = Queue::open(rig.io_port, true, true);
    let cid = q.host.connect(1, 31, 0, HOST_ID, cntlid, NQN, HOST, false);
    let connect = q.host.take_output();
    trickle(&mut q, &connect);
    q.ok(cid);
    let data = pattern(512, 77);
    let cid = q.host.write(1, 5000, data.clone(), 512, true);
    let write = q.host.take_output();
    trickle(&mut q, &write);
    q.ok(cid);
    let cid = q.host.read(1, 5000, 1, 512);
    assert_eq!(q.ok(cid).1, data, "trickled write read back");
}

/// A connection dropped mid-PDU, one stalled mid-PDU and 200 idle ones: a
/// fresh connection still does I/O, the established queue too, and the
/// console answers.
fn abandoned_and_idle_connections(rig: &mut Rig, healthy: &mut Queue) {
    let mut q = Queue::open(rig.io_port, false, false);
    q.host.write(1, 0, pattern(4096, 1), 512, true);
    let capsule = q.host.take_output();
    q.stream().write_all(&capsule[..capsule.len() / 2]).unwrap();
    q.drop_connection();
    let mut stalled = Queue::open(rig.io_port, false, false);
    stalled.stream().write_all(&capsule[..100]).unwrap();

    // In parallel: QEMU's port forward accepts connections slowly one after
    // the other (its listen backlog is 1); in sequence this takes minutes.
    let port = rig.io_port;
    let idle: Vec<_> = (0..200)
        .map(|_| std::thread::spawn(move || tcp(port)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();

    fresh_connection_does_io(rig, 6000, "while 200 connections are idle");
    let cid = healthy.host.read(1, 6000, 16, 512);
    assert_eq!(
        healthy.ok(cid).1,
        pattern(8192, (6000 % 256) as u8),
        "established queue I/O while 200 connections idle"
    );
    let status = rig.console("status");
    assert!(
        status.iter().any(|l| l.starts_with("net0 ")),
        "status answers: {status:#?}"
    );
    let listed = rig.console("nvme");
    let connections = listed
        .iter()
        .filter(|l| l.trim_start().starts_with("connection "))
        .count();
    assert!(
        connections <= 32 + 8,
        "connections held are bounded: {connections}\n{listed:#?}"
    );

    // The target gives up on connections that never Connect (handshake
    // timeout) even though this host keeps them open; their slots come free.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let listed = rig.console("nvme");
        if !listed.iter().any(|l| l.contains("cntlid=None")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections still held: {listed:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    fresh_connection_does_io(
        rig,
        7000,
        "after the idle connections timed out (the host still holding them)",
    );
    drop(idle);
    drop(stalled);
}

/// A new connection, ICReq done. While QEMU's port forward is still handing
/// over (or closing) a flood of connections, the target (one socket in LISTEN
/// per port) may refuse a SYN or the forward drop the connection: the host
/// retries, as a Linux host reconnects.
fn open_retrying(rig: &Rig, when: &str) -> Queue {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    let queue = loop {
        match Queue::try_open(rig.io_port, false, false) {
            Ok(q) => break q,
            Err(e) => {
                refused += 1;
                assert!(
                    Instant::now() < deadline,
                    "no connection {when}: {e:?} ({refused} refused)"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if refused > 0 {
        eprintln!("nvme_protocol: {refused} connection attempts refused {when}");
    }
    queue
}

/// A new host connects and does I/O (see [`open_retrying`]).
fn fresh_connection_does_io(rig: &Rig, lba: u64, when: &str) {
    let (_admin, cntlid) = Queue::enable_admin(open_retrying(rig, when), NQN, HOST, 0);
    let mut io = Queue::io(rig.io_port, 1, cntlid, NQN, HOST, false);
    let data = pattern(8192, lba as u8);
    let cid = io.host.write(1, lba, data.clone(), 512, true);
    io.ok(cid);
    let cid = io.host.read(1, lba, 16, 512);
    assert_eq!(io.ok(cid).1, data, "fresh connection I/O {when}");
}

/// A controller whose host goes silent past KATO is removed: its connection
/// closes no sooner than KATO after its last command, and the console no
/// longer lists it.
fn keep_alive_enforced(rig: &mut Rig) {
    const KATO_MS: u64 = 3000;
    // Right after the flood of idle connections closed: open with retries.
    let opened = open_retrying(rig, "after the idle connections closed");
    let (mut q, cntlid) = Queue::enable_admin(opened, NQN, SILENT_HOST, KATO_MS as u32);
    let cid = q.host.simple(0x18, 0);
    q.ok(cid);
    let silent_since = Instant::now();
    let listed = rig.console("nvme");
    assert!(
        listed
            .iter()
            .any(|l| l.contains(&format!("controller {cntlid} ")) && l.contains(SILENT_HOST)),
        "the new controller is listed: {listed:#?}"
    );
    q.expect_closed(Duration::from_millis(KATO_MS) + REPLY_TIMEOUT);
    let silent_for = silent_since.elapsed();
    // The target's clock started a round trip earlier, and the guest's clock
    // is calibrated, not exact: a tenth of KATO of slack.
    assert!(
        silent_for >= Duration::from_millis(KATO_MS * 9 / 10),
        "closed after {silent_for:?}, before KATO ({KATO_MS} ms) ran out"
    );
    let listed = rig.console("nvme");
    assert!(
        !listed.iter().any(|l| l.contains(SILENT_HOST)),
        "the expired controller is gone: {listed:#?}"
    );
}

/// `nvme ana 1 inaccessible` completes an outstanding AER with an ANA change
/// notice, the ANA log shows it, and I/O fails with ANA Inaccessible.
fn ana_change(rig: &mut Rig, admin: &mut Queue, queues: &mut [Queue]) {
    let cid = admin.host.set_features(0x0B, 1 << 11);
    admin.ok(cid);
    let aer = admin.host.simple(0x0C, 0);
    admin.flush().unwrap();
    assert!(
        matches!(
            admin.try_wait(aer, Duration::from_millis(300)),
            Err(QueueError::Timeout)
        ),
        "the AER stays outstanding until an event"
    );
    let answer = rig.console("nvme ana 1 inaccessible");
    assert!(
        answer
            .iter()
            .any(|l| l == "nvme: ANA group 1 is now inaccessible"),
        "{answer:#?}"
    );
    let (cqe, _) = admin.ok(aer);
    assert_eq!(
        cqe.result & 0x7,
        2,
        "asynchronous event type Notice: {:#x}",
        cqe.result
    );
    assert_eq!(
        (cqe.result >> 8) & 0xFF,
        0x03,
        "ANA change: {:#x}",
        cqe.result
    );
    assert_eq!(
        (cqe.result >> 16) & 0xFF,
        0x0C,
        "log page ANA: {:#x}",
        cqe.result
    );

    let log = admin.log_page(0x0C, 4096);
    assert_eq!(le16(&log, 8), 1, "one ANA group descriptor");
    assert_eq!(le32(&log, 16), 1, "ANAGRPID");
    assert_eq!(log[32] & 0xF, 0x03, "group 1 inaccessible");
    assert_eq!(
        (le32(&log, 20), le32(&log, 48)),
        (1, 1),
        "namespace 1 in the group"
    );

    for q in queues.iter_mut() {
        let cid = q.host.read(1, 0, 8, 512);
        assert_eq!(
            q.status(cid),
            Status::ANA_INACCESSIBLE,
            "read on an inaccessible path"
        );
        let cid = q.host.write(1, 0, vec![9; 4096], 512, true);
        assert_eq!(
            q.status(cid),
            Status::ANA_INACCESSIBLE,
            "write on an inaccessible path"
        );
    }
    rig.console("nvme ana 1 optimized");
    let cid = queues[0].host.read(1, 1000, 8, 512);
    queues[0].ok(cid);
}

/// Two nodes booted with the same `nqn=` (and no `nguid=`) report the same
/// NGUID and UUID, whatever their node-specific settings.
#[test]
fn same_nqn_gives_identical_namespace_ids() {
    let nqn = "nqn.2026-11.io.tandem:same-ids";
    // Both boot at once.
    let a = spawn("nvme-ids-a", &format!("nqn={nqn} cntlid=100-199"), 8 << 20);
    let b = spawn(
        "nvme-ids-b",
        &format!("nqn={nqn} cntlid=200-299 ana=non-optimized"),
        8 << 20,
    );
    let (a, b) = (a.ready(), b.ready());
    let ids = |rig: &Rig, range: std::ops::RangeInclusive<u16>| {
        let (mut q, cntlid) = Queue::admin(rig.io_port, nqn, HOST, 0);
        assert!(range.contains(&cntlid), "CNTLID {cntlid} in {range:?}");
        let ns = q.identify(0, 1);
        let descriptors = ns_descriptors(&q.identify(3, 1));
        let nguid = descriptors
            .iter()
            .find(|d| d.0 == 2)
            .expect("NGUID descriptor")
            .1
            .clone();
        let uuid = descriptors
            .iter()
            .find(|d| d.0 == 3)
            .expect("UUID descriptor")
            .1
            .clone();
        assert_eq!(
            ns[104..120],
            nguid[..],
            "Identify Namespace and descriptor agree"
        );
        (nguid, uuid)
    };
    let (nguid_a, uuid_a) = ids(&a, 100..=199);
    let (nguid_b, uuid_b) = ids(&b, 200..=299);
    assert_ne!(nguid_a, vec![0; 16], "NGUID set");
    assert_ne!(uuid_a, vec![0; 16], "UUID set");
    assert_eq!(
        (nguid_a, uuid_a),
        (nguid_b, uuid_b),
        "both nodes report the same IDs"
    );
}
