//! Front-end address takeover: a host's idle NVMe/TCP connection to the
//! primary (and one with a command outstanding) is reset soon after the
//! primary's QEMU is killed, instead of hanging half-open until keep-alive
//! and TCP timeouts: the survivor claims the dead node's portal address,
//! announces it with gratuitous ARP and tickles the connections the dead
//! node had reported. When the killed node comes back, the survivor gives
//! the address back and a new connection reaches the returning node.
//!
//! Segments (bridges in the test's network namespace, a tap per NIC):
//! front-end and heartbeats net0 10.77.0.0/24 (a .1, b .2, witness .3),
//! replication net1 10.78.0.0/24, host path net2 10.79.0.0/24 (a .1, b .2,
//! and this test's own sockets on the bridge, .20).

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tandem_qemu::layout::cntlid_range;
use tandem_qemu::{NetBackend, Node, NodeName, PairLayout, TempDir, disk};
use tandem_tests::nvme::{Queue, tcp_to};
use tandem_tests::{Netns, READY_TIMEOUT, is_root, skip, tcg_vm};

const NQN: &str = "nqn.2026-11.io.tandem:takeover-test";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:takeover-test-host";
/// Relaxed timers: three TCG guests share two cores with everything else.
const TIMING: &str = "hb_interval=100 hb_timeout=2000 lease=1500";

/// The pair's key (`pair_key=`) for this test process: one per run.
fn pair_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| tandem_tests::tandem_qemu::pairkey::generate().unwrap())
}
const NAMES: [&str; 2] = ["a", "b"];

fn portal(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 79, 0, index as u8 + 1], 4420))
}

/// Waits until the connection is reset; when, or why not.
fn wait_reset(stream: &mut TcpStream, timeout: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open after {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .unwrap();
        match stream.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Instant::now()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read failed: {e}")),
            Ok(0) => return Err("closed with a FIN, not reset".into()),
            Ok(_) => {}
        }
    }
}

/// The `status` text of a node's console.
fn status(console: &mut tandem_qemu::ConsoleClient) -> String {
    console.send(b"status\n").unwrap();
    console
        .read_until("disk0 size=", Duration::from_secs(20))
        .unwrap()
}

fn last_role_is_primary(log: &str) -> bool {
    log.lines()
        .filter(|l| l.starts_with("tandem: role "))
        .last()
        .is_some_and(|l| l.starts_with("tandem: role primary "))
}

struct Pair {
    ns: Netns,
    dir: TempDir,
    nodes: Vec<Node>,
    witness: Node,
    disks: Vec<std::path::PathBuf>,
}

/// The pair's layout: `cargo tandem up`'s segments plus the host path.
fn layout() -> PairLayout {
    PairLayout {
        nqn: NQN.into(),
        host_path: Some("10.79.0.0/24".parse().unwrap()),
        pair_key: Some(pair_key().to_string()),
        ..PairLayout::default()
    }
}

fn member_cmdline(node: NodeName) -> String {
    let log = std::env::var("TANDEM_TAKEOVER_LOG").unwrap_or_else(|_| "info".into());
    layout()
        .cmdline(node, &format!("status_port=0 {TIMING} log={log}"))
        .to_string()
}

fn data_node_spec(
    dir: &std::path::Path,
    ns: &Netns,
    index: usize,
    disk_path: &std::path::Path,
) -> tandem_qemu::VmSpec {
    let name = NAMES[index];
    let node = [NodeName::A, NodeName::B][index];
    let mut spec = tcg_vm(name, dir, &member_cmdline(node)).disk(disk_path);
    for nic in 0..3 {
        spec = spec.nic(
            node.number(),
            NetBackend::Tap {
                ifname: format!("{name}{nic}"),
            },
        );
    }
    spec.netns = Some(ns.name.clone());
    spec
}

impl Pair {
    fn start(label: &str) -> Pair {
        let ns = Netns::new(label);
        for bridge in ["fe", "repl", "hs"] {
            ns.exec("ip", &["link", "add", bridge, "type", "bridge"]);
            ns.exec("ip", &["link", "set", bridge, "up"]);
        }
        ns.exec("ip", &["addr", "add", "10.79.0.20/24", "dev", "hs"]);
        for (member, bridges) in [
            ("a", &["fe", "repl", "hs"][..]),
            ("b", &["fe", "repl", "hs"][..]),
            ("w", &["fe", "repl"][..]),
        ] {
            for (nic, bridge) in bridges.iter().enumerate() {
                let tap = format!("{member}{nic}");
                ns.exec("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"]);
                ns.exec("ip", &["link", "set", &tap, "master", bridge]);
                ns.exec("ip", &["link", "set", &tap, "up"]);
            }
        }
        let dir = TempDir::new(label).unwrap();
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        for index in 0..2 {
            let path = dir.path().join(format!("{}.img", NAMES[index]));
            disk::create_sparse(&path, 64 << 20).unwrap();
            nodes.push(Node::spawn(data_node_spec(dir.path(), &ns, index, &path)).unwrap());
            disks.push(path);
        }
        let mut spec = tcg_vm("witness", dir.path(), &member_cmdline(NodeName::Witness))
            .nic(
                3,
                NetBackend::Tap {
                    ifname: "w0".into(),
                },
            )
            .nic(
                3,
                NetBackend::Tap {
                    ifname: "w1".into(),
                },
            );
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
        }
    }

    /// The primary, once one data node says so and the other is secondary.
    fn primary(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs: Vec<String> = self.nodes.iter().map(|n| n.console_log()).collect();
            let primaries: Vec<usize> =
                (0..2).filter(|i| last_role_is_primary(&logs[*i])).collect();
            assert!(
                primaries.len() <= 1,
                "two primaries:\n{}\n{}",
                logs[0],
                logs[1]
            );
            if let [primary] = primaries[..] {
                if logs[1 - primary].contains("tandem: role secondary ") {
                    return primary;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no primary and secondary:\n{}\n{}",
                logs[0],
                logs[1]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn killed_primary_s_host_connections_are_reset_and_the_address_comes_back() {
    if !is_root() {
        skip("pair_takeover", "network namespaces need root");
        return;
    }
    let mut pair = Pair::start("takeover");
    let first = pair.primary();
    let second = 1 - first;
    let dead_portal = portal(first);

    // An idle admin queue, and an I/O queue that will have a read
    // outstanding when the node dies.
    let (connected_tx, connected_rx) = mpsc::channel();
    let idle = {
        let connected = connected_tx.clone();
        pair.ns.spawn(move || {
            let (mut admin, cntlid) = Queue::admin_over(tcp_to(dead_portal), NQN, HOST, 30_000);
            connected.send(cntlid).unwrap();
            wait_reset(admin.stream(), Duration::from_secs(60))
        })
    };
    let (killed_tx, killed_rx) = mpsc::channel::<()>();
    let busy = pair.ns.spawn(move || {
        let (_admin, cntlid) = Queue::admin_over(tcp_to(dead_portal), NQN, HOST, 30_000);
        let mut io = Queue::try_open_over(tcp_to(dead_portal), false, false)
            .unwrap_or_else(|e| panic!("ICReq: {e:?}"));
        let (status, _) = io.connect(1, cntlid, 0, NQN, HOST);
        assert_eq!(
            status,
            tandem_tests::nvme::Status::SUCCESS,
            "I/O queue connect"
        );
        connected_tx.send(cntlid).unwrap();
        killed_rx.recv().unwrap();
        io.host.read(1, 0, 8, 512);
        io.flush().expect("sending the read");
        wait_reset(io.stream(), Duration::from_secs(60))
    });
    for _ in 0..2 {
        let cntlid = connected_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the host connected to the primary");
        let (low, high) = cntlid_range([NodeName::A, NodeName::B][first]).unwrap();
        assert!(
            (low..=high).contains(&cntlid),
            "controller {cntlid} is the primary's ({low}-{high})"
        );
    }

    // The survivor-to-be has the primary's list of them.
    let mut console = pair.nodes[second].console(Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = status(&mut console);
        if text.contains("peer reported 3 connections") {
            assert!(text.contains("takeover: claimed none"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the primary never reported its three connections:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9 of the primary's QEMU: its connections are half-open now.
    let killed_at = Instant::now();
    pair.nodes[first].kill();
    killed_tx.send(()).unwrap();
    let dead_address = dead_portal.ip().to_string();
    let claim = pair.nodes[second]
        .wait_for_line("the takeover claim", Duration::from_secs(60), |l| {
            l.starts_with(&format!("tandem: takeover claim {dead_address} "))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[second].console_log()));
    let claim_seen = Instant::now();
    let idle_reset = idle.join().unwrap().unwrap_or_else(|e| {
        panic!(
            "the idle connection was not reset: {e}\n{}\n--- the killed node:\n{}",
            pair.nodes[second].console_log(),
            pair.nodes[first].console_log()
        )
    });
    let busy_reset = busy.join().unwrap().unwrap_or_else(|e| {
        panic!(
            "the busy connection was not reset: {e}\n{}",
            pair.nodes[second].console_log()
        )
    });
    let log = pair.nodes[second].console_log();
    let role_line = log
        .lines()
        .filter(|l| l.starts_with("tandem: role primary "))
        .last()
        .unwrap_or("")
        .to_string();
    eprintln!(
        "kill -> claim seen {:?} ({claim}; {role_line}); kill -> idle reset {:?}, busy reset {:?}",
        claim_seen - killed_at,
        idle_reset - killed_at,
        busy_reset - killed_at
    );
    // The claim is seen on the console up to a poll interval late; the resets
    // come within the tickle rounds after it (not after TCP's minutes).
    for (what, reset) in [("idle", idle_reset), ("busy", busy_reset)] {
        // hb_timeout=2000: the failure timeout, then the election (2.3–3.3 s
        // measured on a busy two-core machine), then the tickles.
        assert!(
            reset - killed_at < Duration::from_secs(6),
            "the {what} connection was reset {:?} after the kill",
            reset - killed_at
        );
        assert!(
            reset <= claim_seen + Duration::from_millis(1500),
            "the {what} connection was reset {:?} after the claim was seen",
            reset.saturating_duration_since(claim_seen)
        );
    }
    assert!(
        claim.contains("tickled 3 connections"),
        "the dead node had reported its three connections: {claim}"
    );
    let text = status(&mut console);
    assert!(
        text.contains(&format!("claimed {dead_address} on net2")),
        "status shows the claimed address:\n{text}"
    );

    // The survivor's control datagrams still reach the witness on the
    // front-end link, where it now also holds the dead node's address.
    pair.nodes[second]
        .wait_for_line("tickle round 3", Duration::from_secs(30), |l| {
            l.contains("takeover: round 3 ")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut witness_console = pair.witness.console(Duration::from_secs(20)).unwrap();
    witness_console.send(b"status\n").unwrap();
    witness_console
        .read_until(
            &format!("  {} reachable:", NAMES[second]),
            Duration::from_secs(20),
        )
        .unwrap();
    let heard = witness_console
        .read_until("\n", Duration::from_secs(20))
        .unwrap();
    let link1_ms: u64 = heard
        .split_whitespace()
        .find_map(|field| {
            field
                .strip_prefix("link1:")?
                .strip_suffix("ms")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no link1 age in the witness's status: {heard}"));
    assert!(
        link1_ms < 1000,
        "the witness heard the survivor on link 1 {link1_ms} ms ago: {heard}"
    );

    // While claimed, a new connection to the dead node's address is refused.
    let refused = pair
        .ns
        .spawn(
            move || match TcpStream::connect_timeout(&dead_portal, Duration::from_secs(5)) {
                Err(e) => Ok(e.to_string()),
                Ok(stream) => match Queue::try_open_over(stream, false, false) {
                    Ok(queue) => Err(format!(
                        "ICResp from a node that is not {dead_portal}: {:?}",
                        queue.icresp
                    )),
                    Err(e) => Ok(format!("{e:?}")),
                },
            },
        )
        .join()
        .unwrap();
    assert!(refused.is_ok(), "{refused:?}");

    // The killed node comes back: the survivor releases the address, and a
    // new connection to it reaches the returning node.
    let spec = data_node_spec(pair.dir.path(), &pair.ns, first, &pair.disks[first]);
    let name = NAMES[first];
    let _ = std::fs::rename(
        pair.dir.path().join(format!("{name}.console.log")),
        pair.dir.path().join(format!("{name}.before-kill.log")),
    );
    pair.nodes[first] = Node::spawn(spec).unwrap();
    pair.nodes[first].wait_ready(READY_TIMEOUT).unwrap();
    pair.nodes[second]
        .wait_for_line("the release", Duration::from_secs(60), |l| {
            l.starts_with(&format!("tandem: takeover release {dead_address} "))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[second].console_log()));
    let cntlid = pair
        .ns
        .spawn(move || {
            let started = Instant::now();
            let stream = TcpStream::connect_timeout(&dead_portal, Duration::from_secs(3))
                .map_err(|e| format!("connecting to {dead_portal}: {e}"))?;
            let (_admin, cntlid) = Queue::admin_over(stream, NQN, HOST, 30_000);
            Ok::<_, String>((cntlid, started.elapsed()))
        })
        .join()
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nneighbours: {}\n--- survivor:\n{}\n--- returning node:\n{}",
                pair.ns.exec("ip", &["neigh", "show"]),
                pair.nodes[second].console_log(),
                pair.nodes[first].console_log()
            )
        });
    eprintln!(
        "new connection to {dead_portal} after the release: controller {} in {:?}",
        cntlid.0, cntlid.1
    );
    let (low, high) = cntlid_range([NodeName::A, NodeName::B][first]).unwrap();
    assert!(
        (low..=high).contains(&cntlid.0),
        "controller {} is the returning node's ({low}-{high})",
        cntlid.0
    );
    assert!(
        cntlid.1 < Duration::from_secs(3),
        "the host's ARP cache pointed back at the returning node at once"
    );
    for node in &pair.nodes {
        assert!(
            !node.console_log().contains("tandem: panic"),
            "{}",
            node.console_log()
        );
    }
}

/// The primary's front-end links go down (QMP `set_link`, as `cargo tandem
/// fault link-down` does) while the pair still hears each other on the
/// replication link: the primary judges its host path lost and hands over
/// as in a planned switchover, the new primary claims its portal address and
/// resets the host's connection to it; when the links return the old primary
/// reports a host path again and gets its address back, and stays Secondary
/// (no failback).
#[test]
fn primary_s_front_end_cut_hands_over_and_its_host_connections_are_reset() {
    if !is_root() {
        skip("pair_takeover", "network namespaces need root");
        return;
    }
    let mut pair = Pair::start("hostpath");
    let first = pair.primary();
    let primary_seen = Instant::now();
    let second = 1 - first;
    let cut_portal = portal(first);
    let cut_address = cut_portal.ip().to_string();

    let (connected_tx, connected_rx) = mpsc::channel();
    let idle = pair.ns.spawn(move || {
        let (mut admin, cntlid) = Queue::admin_over(tcp_to(cut_portal), NQN, HOST, 30_000);
        connected_tx.send(cntlid).unwrap();
        wait_reset(admin.stream(), Duration::from_secs(90))
    });
    connected_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the host connected to the primary");
    let mut console = pair.nodes[second].console(Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = status(&mut console);
        if text.contains("peer reported 1 connections") {
            assert!(
                text.contains("host-path: ok (nic:up peer:heard witness:heard)"),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the primary never reported the connection:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Host-path handovers are spaced by ten failure timeouts (20 s here)
    // from the node's becoming primary.
    std::thread::sleep(Duration::from_secs(21).saturating_sub(primary_seen.elapsed()));

    let mut qmp = pair.nodes[first].qmp(Duration::from_secs(20)).unwrap();
    let cut_at = Instant::now();
    for nic in ["nic0", "nic2"] {
        qmp.set_link(nic, false).unwrap();
    }
    let lost = pair.nodes[first]
        .wait_for_line("host path lost", Duration::from_secs(30), |l| {
            l.starts_with("tandem: host path lost")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[first].console_log()));
    let _ = lost;
    pair.nodes[first]
        .wait_for_line("the handover", Duration::from_secs(30), |l| {
            l.starts_with("tandem: role secondary ") && l.ends_with("reason host-path-lost")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[first].console_log()));
    let claim = pair.nodes[second]
        .wait_for_line("the claim", Duration::from_secs(30), |l| {
            l.starts_with(&format!("tandem: takeover claim {cut_address} "))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[second].console_log()));
    assert!(
        claim.contains("(peer's front-end lost)") && claim.contains("tickled 1 connections"),
        "{claim}"
    );
    let reset = idle.join().unwrap().unwrap_or_else(|e| {
        panic!(
            "the connection was not reset: {e}\n{}",
            pair.nodes[second].console_log()
        )
    });
    let log = pair.nodes[second].console_log();
    assert!(last_role_is_primary(&log), "{log}");
    eprintln!(
        "front-end cut -> host connection reset {:?}",
        reset - cut_at
    );
    // hb_interval=100 hb_timeout=2000: the loss is believed after 200 ms,
    // the switchover and the claim take a few hundred more; a kill takes
    // the failure timeout and an election first (the other test's 6 s).
    assert!(
        reset - cut_at < Duration::from_secs(4),
        "reset {:?} after the cut",
        reset - cut_at
    );

    // The links return: the old primary's host path is back after twice the
    // failure timeout, the survivor releases the address, nothing fails back.
    for nic in ["nic0", "nic2"] {
        qmp.set_link(nic, true).unwrap();
    }
    pair.nodes[first]
        .wait_for_line("host path back", Duration::from_secs(30), |l| {
            l.starts_with("tandem: host path back")
        })
        .unwrap_or_else(|e| {
            let mut first_console = pair.nodes[first].console(Duration::from_secs(20)).unwrap();
            panic!(
                "{e}\n{}\n--- status of the old primary:\n{}\n--- of the new:\n{}",
                pair.nodes[first].console_log(),
                status(&mut first_console),
                status(&mut console)
            )
        });
    pair.nodes[second]
        .wait_for_line("the release", Duration::from_secs(30), |l| {
            l.starts_with(&format!("tandem: takeover release {cut_address} "))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.nodes[second].console_log()));
    std::thread::sleep(Duration::from_secs(2));
    assert!(last_role_is_primary(&pair.nodes[second].console_log()));
    assert!(!last_role_is_primary(&pair.nodes[first].console_log()));
    for node in &pair.nodes {
        assert!(
            !node.console_log().contains("tandem: panic"),
            "{}",
            node.console_log()
        );
    }
}
