//! An HA pair (a, b, witness) on QEMU multicast segments in a network
//! namespace of the test's own: one node becomes primary, a write it
//! acknowledges is in both disk files, and the secondary refuses I/O at once
//! with the ANA Inaccessible path status.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tandem_nvme::wire::status::Status;
use tandem_qemu::{NetBackend, Node, NodeName, PairLayout, TempDir, disk, free_port};
use tandem_tests::nvme::{Queue, pattern};
use tandem_tests::{Netns, READY_TIMEOUT, is_root, skip, tcg_vm, user_nic};

const NQN: &str = "nqn.2026-11.io.tandem:pair-test";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:pair-test-host";
/// Relaxed timers: three TCG guests share two cores with everything else.
const TIMING: &str = "hb_interval=100 hb_timeout=2000 lease=1500";

/// The pair's key (`pair_key=`) for this test process: one per run.
fn pair_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| tandem_tests::tandem_qemu::pairkey::generate().unwrap())
}

fn segment(port: u16) -> NetBackend {
    NetBackend::Multicast {
        group: format!("230.0.0.1:{port}").parse().unwrap(),
        local: Ipv4Addr::LOCALHOST,
    }
}

fn wait_for_role(node: &mut Node, role: &str, timeout: Duration) -> String {
    node.wait_for_line(role, timeout, |line| {
        line.starts_with(&format!("tandem: role {role} "))
    })
    .unwrap_or_else(|e| panic!("no `role {role}` line: {e}\n{}", node.console_log()))
}

/// The command line of a member: `cargo tandem up`'s layout with the test's
/// NQN, timing and no status port.
fn member_cmdline(node: NodeName) -> String {
    let layout = PairLayout {
        nqn: NQN.into(),
        pair_key: Some(pair_key().to_string()),
        ..PairLayout::default()
    };
    layout
        .cmdline(node, &format!("status_port=0 {TIMING}"))
        .to_string()
}

struct Pair {
    ns: Netns,
    dir: TempDir,
    nodes: Vec<Node>,
    witness: Node,
    disks: Vec<std::path::PathBuf>,
    ports: Vec<u16>,
    segments: (u16, u16),
}

fn data_node_spec(
    pair_dir: &std::path::Path,
    ns: &Netns,
    index: usize,
    disk_path: &std::path::Path,
    port: u16,
    segments: (u16, u16),
) -> tandem_qemu::VmSpec {
    let node = [NodeName::A, NodeName::B][index];
    let me = node.number();
    let mut spec = tcg_vm(node.as_str(), pair_dir, &member_cmdline(node))
        .disk(disk_path)
        .nic(me, segment(segments.0))
        .nic(me, segment(segments.1))
        .nic(me, user_nic(&[(port, 4420)]));
    spec.netns = Some(ns.name.clone());
    spec
}

impl Pair {
    fn start(label: &str) -> Pair {
        Pair::start_on_disks(label, [64 << 20, 64 << 20])
    }

    /// The pair on fresh disks of these sizes (a's, b's).
    fn start_on_disks(label: &str, disk_bytes: [u64; 2]) -> Pair {
        let ns = Netns::new(label);
        ns.exec("ip", &["link", "set", "lo", "multicast", "on"]);
        let dir = TempDir::new(label).unwrap();
        let segments = (free_port().unwrap(), free_port().unwrap());
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        let mut ports = Vec::new();
        for index in 0..2 {
            let path = dir.path().join(format!("{}.img", ["a", "b"][index]));
            disk::create_sparse(&path, disk_bytes[index]).unwrap();
            // Another test may take a free port before QEMU binds it: pick
            // another one then.
            let mut attempts = 0;
            let (node, port) = loop {
                let port = free_port().unwrap();
                match Node::spawn(data_node_spec(
                    dir.path(),
                    &ns,
                    index,
                    &path,
                    port,
                    segments,
                )) {
                    Ok(node) => break (node, port),
                    Err(tandem_qemu::Error::PortInUse { .. }) if attempts < 5 => attempts += 1,
                    Err(e) => panic!("node {index}: {e}"),
                }
            };
            nodes.push(node);
            disks.push(path);
            ports.push(port);
        }
        let mut spec = tcg_vm("witness", dir.path(), &member_cmdline(NodeName::Witness))
            .nic(3, segment(segments.0))
            .nic(3, segment(segments.1));
        spec.memory_mib = 16;
        spec.netns = Some(ns.name.clone());
        let mut witness = Node::spawn(spec).unwrap();
        for node in nodes.iter_mut().chain(std::iter::once(&mut witness)) {
            node.wait_ready(READY_TIMEOUT).unwrap();
        }
        Pair {
            ns,
            dir,
            nodes,
            witness,
            disks,
            ports,
            segments,
        }
    }

    /// Index of the one primary, once exactly one data node has said so
    /// `count` times in all.
    fn primary(&self, count: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines: Vec<usize> = self
                .nodes
                .iter()
                .map(|n| n.console_log().matches("tandem: role primary ").count())
                .collect();
            if lines.iter().sum::<usize>() >= count {
                let last = self
                    .nodes
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, n)| last_role_is_primary(&n.console_log()))
                    .unwrap();
                let primaries = self
                    .nodes
                    .iter()
                    .filter(|n| last_role_is_primary(&n.console_log()))
                    .count();
                assert!(
                    primaries <= 1,
                    "two primaries:\n{}\n{}",
                    self.nodes[0].console_log(),
                    self.nodes[1].console_log()
                );
                if primaries == 1 {
                    return last.0;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no primary:\n{}\n{}",
                self.nodes[0].console_log(),
                self.nodes[1].console_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Whether a node's latest role line says primary.
fn last_role_is_primary(log: &str) -> bool {
    log.lines()
        .filter(|l| l.starts_with("tandem: role "))
        .last()
        .is_some_and(|l| l.starts_with("tandem: role primary "))
}

/// Writes `data` at `lba` through `port`, retrying ANA path errors (as the
/// Linux host retries on another path) until `timeout`.
fn write_retrying(ns: &Netns, port: u16, lba: u64, data: Vec<u8>, timeout: Duration) {
    ns.run_in(move || {
        let (_admin, cntlid) = Queue::admin(port, NQN, HOST, 30_000);
        let mut io = Queue::io(port, 1, cntlid, NQN, HOST, false);
        let deadline = Instant::now() + timeout;
        loop {
            let cid = io.host.write(1, lba, data.clone(), 512, false);
            let status = io.status(cid);
            if status == Status::SUCCESS {
                return;
            }
            assert!(
                status == Status::ANA_TRANSITION || status == Status::ANA_INACCESSIBLE,
                "write failed with {status:?}"
            );
            assert!(Instant::now() < deadline, "no node accepted the write");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn read(ns: &Netns, port: u16, lba: u64, blocks: u32) -> (Status, Vec<u8>) {
    ns.run_in(move || {
        let (_admin, cntlid) = Queue::admin(port, NQN, HOST, 30_000);
        let mut io = Queue::io(port, 1, cntlid, NQN, HOST, false);
        let cid = io.host.read(1, lba, blocks, 512);
        let (completion, data) = io.wait(cid);
        (completion.status, data)
    })
}

/// The disk counter `name` (e.g. `zeroes=`) of `status`, and its line.
fn disk_counter(status: &[String], name: &str) -> (u64, String) {
    let line = status
        .iter()
        .find(|l| l.trim_start().starts_with("reads="))
        .expect("disk counters");
    let value = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix(name))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    (value, line.clone())
}

#[test]
fn pair_replicates_acknowledged_writes_and_the_secondary_refuses_io() {
    if !is_root() {
        skip("pair_replication", "network namespaces need root");
        return;
    }
    let mut pair = Pair::start("pair");
    let primary = pair.primary(1);
    let secondary = 1 - primary;
    wait_for_role(
        &mut pair.nodes[secondary],
        "secondary",
        Duration::from_secs(30),
    );

    let data = pattern(64 * 1024, 77);
    write_retrying(
        &pair.ns,
        pair.ports[primary],
        2048,
        data.clone(),
        Duration::from_secs(30),
    );
    let (status, read_back) = read(&pair.ns, pair.ports[primary], 2048, 128);
    assert_eq!(status, Status::SUCCESS);
    assert_eq!(read_back, data, "read back from the primary");
    let (status, _) = read(&pair.ns, pair.ports[secondary], 2048, 8);
    assert_eq!(
        status,
        Status::ANA_INACCESSIBLE,
        "the secondary refuses I/O with a path status"
    );

    // The acknowledged write is in both disk files (the secondary applied it
    // durably before the primary acknowledged).
    for path in &pair.disks {
        let mut file = vec![0u8; data.len()];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut file, 2048 * 512)
            .unwrap();
        assert_eq!(file, data, "acknowledged write in {}", path.display());
    }

    // Write Zeroes over the middle of it reaches the secondary as one
    // frame, which zeroes its disk with the device's write-zeroes.
    let port = pair.ports[primary];
    let status = pair.ns.run_in(move || {
        let (_admin, cntlid) = Queue::admin(port, NQN, HOST, 30_000);
        let mut io = Queue::io(port, 1, cntlid, NQN, HOST, false);
        let cid = io.host.write_zeroes(1, 2048 + 32, 64, false);
        io.status(cid)
    });
    assert_eq!(status, Status::SUCCESS);
    let mut expected = data.clone();
    expected[32 * 512..96 * 512].fill(0);
    for path in &pair.disks {
        let mut file = vec![0u8; data.len()];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut file, 2048 * 512)
            .unwrap();
        assert!(file == expected, "zeroed range in {}", path.display());
    }
    let mut console = pair.nodes[secondary]
        .console(Duration::from_secs(10))
        .unwrap();
    let status = console.command("status", Duration::from_secs(10)).unwrap();
    let (zeroes, counters) = disk_counter(&status, "zeroes=");
    assert!(
        zeroes >= 1,
        "the secondary zeroed through its disk's write-zeroes: {counters}"
    );

    // Deallocate (two ranges) reaches the secondary's disk as discards.
    let status = pair.ns.run_in(move || {
        let (_admin, cntlid) = Queue::admin(port, NQN, HOST, 30_000);
        let mut io = Queue::io(port, 1, cntlid, NQN, HOST, false);
        let cid = io.host.deallocate(1, &[(8192, 2048), (16384, 128)]);
        io.status(cid)
    });
    assert_eq!(status, Status::SUCCESS);
    let status = console.command("status", Duration::from_secs(10)).unwrap();
    let (discards, counters) = disk_counter(&status, "discards=");
    assert!(
        discards >= 2,
        "the secondary discarded both ranges: {counters}"
    );
    for node in &pair.nodes {
        let log = node.console_log();
        assert!(!log.contains("tandem: panic"), "{log}");
        assert_eq!(
            log.matches("tandem: role fenced").count(),
            0,
            "no node fenced itself without a fault:\n{log}"
        );
    }
}

#[test]
fn primary_killed_the_secondary_takes_over_and_the_returning_node_resyncs() {
    if !is_root() {
        skip("pair_failover", "network namespaces need root");
        return;
    }
    let mut pair = Pair::start("failover");
    let first = pair.primary(1);
    let second = 1 - first;
    wait_for_role(
        &mut pair.nodes[second],
        "secondary",
        Duration::from_secs(30),
    );
    let before = pattern(32 * 1024, 1);
    write_retrying(
        &pair.ns,
        pair.ports[first],
        100,
        before.clone(),
        Duration::from_secs(30),
    );

    // kill -9 of the primary's QEMU.
    pair.nodes[first].kill();
    let takeover = Instant::now();
    let line = wait_for_role(&mut pair.nodes[second], "primary", Duration::from_secs(60));
    let took = takeover.elapsed();
    eprintln!("takeover after {took:?}: {line}");

    // The acknowledged write survived; new writes are accepted by the survivor.
    let (status, data) = read(&pair.ns, pair.ports[second], 100, 64);
    assert_eq!(status, Status::SUCCESS);
    assert_eq!(
        data, before,
        "acknowledged before the kill, read from the new primary"
    );
    let during = pattern(32 * 1024, 2);
    write_retrying(
        &pair.ns,
        pair.ports[second],
        5000,
        during.clone(),
        Duration::from_secs(30),
    );

    // The killed node comes back on its disk, resyncs, and is secondary.
    let port = pair.ports[first];
    let spec = data_node_spec(
        pair.dir.path(),
        &pair.ns,
        first,
        &pair.disks[first],
        port,
        pair.segments,
    );
    let log_name = ["a", "b"][first];
    let _ = std::fs::rename(
        pair.dir.path().join(format!("{log_name}.console.log")),
        pair.dir.path().join(format!("{log_name}.before-kill.log")),
    );
    pair.nodes[first] = Node::spawn(spec).unwrap();
    pair.nodes[first].wait_ready(READY_TIMEOUT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut file = vec![0u8; during.len()];
        File::open(&pair.disks[first])
            .unwrap()
            .read_exact_at(&mut file, 5000 * 512)
            .unwrap();
        if file == during {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the returning node never received the write made while it was down:\n{}",
            pair.nodes[first].console_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !last_role_is_primary(&pair.nodes[first].console_log()),
        "the returning node must not be primary:\n{}",
        pair.nodes[first].console_log()
    );
    assert!(last_role_is_primary(&pair.nodes[second].console_log()));
    let _ = &pair.witness;
}

/// The data area of a 64 MiB disk: the disk minus the pair's metadata (two
/// superblock slots and one bitmap block, docs/on-disk-format.md).
const DATA_BYTES_64M: u64 = (64 << 20) - 3 * 4096;

/// The namespace size (bytes, 512-byte blocks) a node's portal reports.
fn namespace_bytes(ns: &Netns, port: u16) -> u64 {
    ns.run_in(move || {
        let (mut admin, _) = Queue::admin(port, NQN, HOST, 30_000);
        let data = admin.identify(0x00, 1);
        tandem_tests::nvme::le64(&data, 0) * 512
    })
}

#[test]
fn disks_of_different_sizes_serve_the_smaller_one_and_a_smaller_replacement_is_refused() {
    if !is_root() {
        skip("pair_sizes", "network namespaces need root");
        return;
    }
    // a's disk is larger than b's: the pair serves b's data area.
    let mut pair = Pair::start_on_disks("sizes", [80 << 20, 64 << 20]);
    let primary = pair.primary(1);
    let secondary = 1 - primary;
    wait_for_role(
        &mut pair.nodes[secondary],
        "secondary",
        Duration::from_secs(30),
    );
    for node in 0..2 {
        assert_eq!(
            namespace_bytes(&pair.ns, pair.ports[node]),
            DATA_BYTES_64M,
            "node {node}'s namespace"
        );
        let mut console = pair.nodes[node].console(Duration::from_secs(10)).unwrap();
        let status = console
            .command("status", Duration::from_secs(10))
            .unwrap()
            .join("\n");
        assert!(
            status.contains(&format!("size:{DATA_BYTES_64M}B")),
            "{status}"
        );
    }
    // The namespace's last blocks take a write, on both disks.
    let last = DATA_BYTES_64M / 512 - 8;
    let data = pattern(4096, 9);
    write_retrying(
        &pair.ns,
        pair.ports[primary],
        last,
        data.clone(),
        Duration::from_secs(30),
    );
    for path in &pair.disks {
        let mut file = vec![0u8; data.len()];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut file, last * 512)
            .unwrap();
        assert_eq!(
            file,
            data,
            "the namespace's last blocks in {}",
            path.display()
        );
    }

    // The secondary's disk is replaced by a smaller blank one: refused,
    // with the sizes on its console; the primary keeps serving.
    pair.nodes[secondary].kill();
    let path = pair.disks[secondary].clone();
    std::fs::remove_file(&path).unwrap();
    disk::create_sparse(&path, 48 << 20).unwrap();
    let port = pair.ports[secondary];
    let spec = data_node_spec(
        pair.dir.path(),
        &pair.ns,
        secondary,
        &path,
        port,
        pair.segments,
    );
    let name = ["a", "b"][secondary];
    let _ = std::fs::rename(
        pair.dir.path().join(format!("{name}.console.log")),
        pair.dir.path().join(format!("{name}.before-kill.log")),
    );
    pair.nodes[secondary] = Node::spawn(spec).unwrap();
    pair.nodes[secondary].wait_ready(READY_TIMEOUT).unwrap();
    let line = pair.nodes[secondary]
        .wait_for_line("a size refusal", Duration::from_secs(60), |line| {
            line.contains("refused disk-too-small")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[secondary].console_log()));
    assert!(
        line.contains("this node's disk is smaller than the pair's namespace"),
        "{line}"
    );
    let log = pair.nodes[secondary].console_log();
    assert!(
        log.contains(&format!("namespace {DATA_BYTES_64M} bytes")),
        "{log}"
    );
    assert!(log.contains("hosts wait (Controller Busy)"), "{log}");
    assert!(!last_role_is_primary(&log));
    write_retrying(
        &pair.ns,
        pair.ports[primary],
        64,
        pattern(4096, 10),
        Duration::from_secs(30),
    );
    assert!(last_role_is_primary(&pair.nodes[primary].console_log()));
    for node in &pair.nodes {
        assert!(!node.console_log().contains("tandem: panic"));
    }
}
