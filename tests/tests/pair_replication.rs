//! An HA pair (a, b, witness) on QEMU multicast segments in a network
//! namespace of the test's own: one node becomes primary, a write it
//! acknowledges is in both disk files, and the secondary refuses I/O at once
//! with the ANA Inaccessible path status.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tandem_nvme::wire::status::Status;
use tandem_qemu::{NetBackend, Node, TempDir, disk, free_port};
use tandem_tests::nvme::{Queue, pattern};
use tandem_tests::{Netns, READY_TIMEOUT, is_root, skip, tcg_vm, user_nic};

const NQN: &str = "nqn.2026-11.io.tandem:pair-test";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:pair-test-host";
/// Relaxed timers: three TCG guests share two cores with everything else.
const TIMING: &str = "hb_interval=100 hb_timeout=2000 lease=1500";

fn segment(port: u16) -> NetBackend {
    NetBackend::Multicast { group: format!("230.0.0.1:{port}").parse().unwrap(), local: Ipv4Addr::LOCALHOST }
}

/// Runs `f` on a thread that has entered the namespace (setns affects only
/// the calling thread), so its sockets reach the guests' forwarded ports.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace file we opened.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {path}");
        f()
    })
    .join()
    .unwrap()
}

fn wait_for_role(node: &mut Node, role: &str, timeout: Duration) -> String {
    node.wait_for_line(role, timeout, |line| line.starts_with(&format!("tandem: role {role} ")))
        .unwrap_or_else(|e| panic!("no `role {role}` line: {e}\n{}", node.console_log()))
}

#[test]
fn pair_replicates_acknowledged_writes_and_the_secondary_refuses_io() {
    if !is_root() {
        skip("pair_replication", "network namespaces need root");
        return;
    }
    let ns = Netns::new("pair");
    ns.exec("ip", &["link", "set", "lo", "multicast", "on"]);
    let dir = TempDir::new("pair").unwrap();
    let (front, repl) = (free_port().unwrap(), free_port().unwrap());
    let mut nodes = Vec::new();
    let mut disks = Vec::new();
    let mut ports = Vec::new();
    for (index, name) in ["a", "b"].into_iter().enumerate() {
        let me = index + 1;
        let peer = 2 - index;
        let path = dir.path().join(format!("{name}.img"));
        disk::create_sparse(&path, 64 << 20).unwrap();
        let port = free_port().unwrap();
        let cmdline = format!(
            "net0=10.77.0.{me}/24 net1=10.78.0.{me}/24 node={name} peer=10.77.0.{peer} peer_repl=10.78.0.{peer} \
             witness=10.77.0.3 witness_repl=10.78.0.3 nqn={NQN} cntlid={}-{} status_port=0 {TIMING}",
            me * 1000,
            me * 1000 + 999
        );
        let mut spec = tcg_vm(name, dir.path(), &cmdline)
            .disk(&path)
            .nic(me as u8, segment(front))
            .nic(me as u8, segment(repl))
            .nic(me as u8, user_nic(&[(port, 4420)]));
        spec.netns = Some(ns.name.clone());
        nodes.push(Node::spawn(spec).unwrap());
        disks.push(path);
        ports.push(port);
    }
    let mut spec = tcg_vm(
        "witness",
        dir.path(),
        &format!("net0=10.77.0.3/24 net1=10.78.0.3/24 role=witness node_a=10.77.0.1 node_b=10.77.0.2 node_a_repl=10.78.0.1 node_b_repl=10.78.0.2 status_port=0 {TIMING}"),
    )
    .nic(3, segment(front))
    .nic(3, segment(repl));
    spec.memory_mib = 16;
    spec.netns = Some(ns.name.clone());
    let mut witness = Node::spawn(spec).unwrap();
    for node in nodes.iter_mut().chain(std::iter::once(&mut witness)) {
        node.wait_ready(READY_TIMEOUT).unwrap();
    }

    // Exactly one data node becomes primary.
    let deadline = Instant::now() + Duration::from_secs(60);
    let primary = loop {
        let roles: Vec<bool> = nodes.iter().map(|n| n.console_log().contains("tandem: role primary ")).collect();
        match roles.as_slice() {
            [true, false] => break 0,
            [false, true] => break 1,
            [true, true] => panic!("two primaries:\n{}\n{}", nodes[0].console_log(), nodes[1].console_log()),
            _ if Instant::now() > deadline => panic!("no primary:\n{}\n{}", nodes[0].console_log(), nodes[1].console_log()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let secondary = 1 - primary;
    wait_for_role(&mut nodes[secondary], "secondary", Duration::from_secs(30));

    let (primary_port, secondary_port) = (ports[primary], ports[secondary]);
    let data = pattern(64 * 1024, 77);
    let written = data.clone();
    let (read_back, secondary_status) = in_netns(&ns, move || {
        let (_admin, cntlid) = Queue::admin(primary_port, NQN, HOST, 30_000);
        let mut io = Queue::io(primary_port, 1, cntlid, NQN, HOST, false);
        // The first writes may meet the ANA change still settling: retry
        // path errors for a while, as the Linux host would.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cid = io.host.write(1, 2048, written.clone(), 512, false);
            let status = io.status(cid);
            if status == Status::SUCCESS {
                break;
            }
            assert!(
                status == Status::ANA_TRANSITION || status == Status::ANA_INACCESSIBLE,
                "write failed with {status:?}"
            );
            assert!(Instant::now() < deadline, "the primary never accepted the write");
            std::thread::sleep(Duration::from_millis(200));
        }
        let cid = io.host.read(1, 2048, 128, 512);
        let read_back = io.ok(cid).1;

        let (_admin, cntlid) = Queue::admin(secondary_port, NQN, HOST, 30_000);
        let mut io = Queue::io(secondary_port, 1, cntlid, NQN, HOST, false);
        let cid = io.host.read(1, 2048, 8, 512);
        (read_back, io.status(cid))
    });
    assert_eq!(read_back, data, "read back from the primary");
    assert_eq!(secondary_status, Status::ANA_INACCESSIBLE, "the secondary refuses I/O with a path status");

    // The acknowledged write is on both disks (the secondary applied it
    // durably before the primary acknowledged).
    for path in &disks {
        let mut file = vec![0u8; data.len()];
        File::open(path).unwrap().read_exact_at(&mut file, 2048 * 512).unwrap();
        assert_eq!(file, data, "acknowledged write in {}", path.display());
    }
    for node in &nodes {
        let log = node.console_log();
        assert!(!log.contains("tandem: panic"), "{log}");
        assert_eq!(log.matches("tandem: role fenced").count(), 0, "no node fenced itself without a fault:\n{log}");
    }
}
