//! Attacks on a running pair (`cargo tandem up`) from untrusted machines on
//! its front-end and replication segments (docs/ha-protocol.md §0): forged
//! control datagrams (the version-1 format anyone can build from the spec,
//! and version 2 with a wrong key), genuine datagrams captured on the
//! segments and sent again (as they were, and from another address), also
//! after a role change and after a restart of the witness, and connections to
//! the replication stream's port with a wrong key. The pair keeps its roles
//! and epoch, answers nothing, counts every kind of drop, never prints its
//! key, and still fails over when the primary is killed afterwards.
//!
//! The attacker is `attacker.py`, run inside the setup's network namespace
//! on the segments' bridges with raw sockets. Needs root; skipped otherwise.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_ha::auth::{Keys, PairKey};
use tandem_ha::wire::control::{
    Datagram, ElectionReason, Heartbeat, HostPathReport, Message, Refusal, flags,
};
use tandem_ha::wire::sealed::{AuthFields, seal};
use tandem_ha::wire::stream::{Body, Frame, Hello};
use tandem_ha::{DataState, EpochRecord, LinkId, NodeId, Role};
use tandem_qemu::pair::SetupDir;
use tandem_qemu::{ConsoleClient, TempDir};

const COMMAND_LIMIT: Duration = Duration::from_secs(600);
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Roles settle and stay: several failure timeouts of the TCG timing.
const SETTLE: Duration = Duration::from_secs(90);
/// After an attack, the pair gets this long to misbehave.
const AFTERMATH: Duration = Duration::from_secs(5);
const CONTROL_PORT: u16 = 7790;
const STREAM_PORT: u16 = 7789;
const ATTACKER_HOST: u8 = 66;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `program args`, killed after `limit`.
fn run(program: &str, args: &[&str], limit: Duration) -> Outcome {
    let out_dir = TempDir::new("attack-cmd").unwrap();
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    let outcome = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    };
    assert!(
        status.is_some(),
        "{program} {args:?} still ran after {limit:?}\n{outcome}"
    );
    outcome
}

struct Setup {
    dir: TempDir,
    third: u8,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: TempDir::new("pair-attacks").unwrap(),
            third: ((std::process::id() * 7 + 1) % 250) as u8,
        }
    }

    fn tandem(&self, command: &[&str]) -> Outcome {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--dir", self.dir.path().to_str().unwrap()]);
        run(env!("CARGO_BIN_EXE_tandem"), &args, COMMAND_LIMIT)
    }

    fn up(&self) -> Outcome {
        let front = format!("10.215.{}.0/24", self.third);
        let repl = format!("10.216.{}.0/24", self.third);
        self.tandem(&[
            "up",
            "--accel",
            "tcg",
            "--disk-size",
            "64M",
            "--front-end-net",
            &front,
            "--replication-net",
            &repl,
            "--timeout",
            "90",
        ])
    }

    fn front(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 215, self.third, host)
    }

    fn repl(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 216, self.third, host)
    }

    fn netns(&self) -> String {
        SetupDir::open(self.dir.path()).names.netns
    }

    /// Runs the attacker in the setup's namespace.
    fn attacker(&self, args: &[&str]) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/attacker.py");
        let netns = self.netns();
        let mut full = vec!["netns", "exec", netns.as_str(), "python3", script];
        full.extend_from_slice(args);
        let outcome = run("ip", &full, Duration::from_secs(120));
        assert_eq!(outcome.code, Some(0), "attacker {args:?}\n{outcome}");
        outcome.stdout
    }

    fn in_netns(&self, args: &[&str]) {
        let netns = self.netns();
        let mut full = vec!["netns", "exec", netns.as_str()];
        full.extend_from_slice(args);
        let outcome = run("ip", &full, Duration::from_secs(30));
        assert_eq!(outcome.code, Some(0), "{args:?}\n{outcome}");
    }

    fn status(&self, node: &str) -> Vec<String> {
        let socket = self.dir.path().join(format!("{node}.console.sock"));
        let mut console = ConsoleClient::connect(&socket, CONSOLE_TIMEOUT).unwrap();
        console.command("status", CONSOLE_TIMEOUT).unwrap()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.tandem(&["down"]);
    }
}

/// `(role, epoch)` from a data node's status (`a role:primary epoch:3 …`).
fn role_and_epoch(status: &[String], node: &str) -> (String, u64) {
    let line = status
        .iter()
        .find(|l| l.starts_with(&format!("{node} role:")))
        .unwrap_or_else(|| panic!("no role line for {node} in {status:?}"));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    (field("role:"), field("epoch:").parse().unwrap())
}

/// A counter from a status line: the number after `name` on the line
/// starting with `line_start`.
fn counter(status: &[String], line_start: &str, name: &str) -> u64 {
    let line = status
        .iter()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no `{line_start}` line in {status:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.trim_end_matches(',') == name)
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    words[at + 1].trim_end_matches([',', ';']).parse().unwrap()
}

fn control(status: &[String], name: &str) -> u64 {
    counter(status, "control datagrams:", name)
}

/// Waits until one data node is primary and the other secondary, with the
/// stream up; returns (primary, secondary, epoch).
fn settled_roles(setup: &Setup) -> (&'static str, &'static str, u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let a = setup.status("a");
        let b = setup.status("b");
        let (role_a, epoch_a) = role_and_epoch(&a, "a");
        let (role_b, epoch_b) = role_and_epoch(&b, "b");
        let connected = [&a, &b]
            .iter()
            .all(|s| s.iter().any(|l| l.contains("replication:Established")));
        if epoch_a == epoch_b && connected {
            match (role_a.as_str(), role_b.as_str()) {
                ("primary", "secondary") => return ("a", "b", epoch_a),
                ("secondary", "primary") => return ("b", "a", epoch_a),
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "roles did not settle:\n{a:#?}\n{b:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn node_id(name: &str) -> NodeId {
    NodeId::from_name(name).unwrap()
}

/// A captured or forged frame for the attacker (`inject`).
fn frame_json(
    src_mac: &str,
    dst_mac: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> String {
    serde_json::json!({
        "src_mac": src_mac, "dst_mac": dst_mac,
        "src_ip": src.to_string(), "dst_ip": dst.to_string(),
        "sport": CONTROL_PORT, "dport": CONTROL_PORT,
        "payload": hex(payload),
    })
    .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

struct Captured {
    frames: Vec<Value>,
}

impl Captured {
    fn read(path: &Path) -> Captured {
        let text = std::fs::read_to_string(path).unwrap();
        let frames = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        Captured { frames }
    }

    /// Control datagrams between members (version 2, TDHA/TDCN).
    fn control(&self) -> Vec<&Value> {
        self.frames
            .iter()
            .filter(|f| {
                f["dport"] == CONTROL_PORT && f["payload"].as_str().is_some_and(|p| p.len() > 10)
            })
            .collect()
    }

    /// The MAC address of `ip`, as seen on the segment.
    fn mac_of(&self, ip: Ipv4Addr) -> String {
        self.frames
            .iter()
            .find(|f| f["src_ip"] == ip.to_string())
            .and_then(|f| f["src_mac"].as_str())
            .unwrap_or_else(|| panic!("{ip} sent nothing in the capture"))
            .to_string()
    }

    /// The session nonce `ip` puts in its datagrams (bytes 24..32).
    fn nonce_of(&self, ip: Ipv4Addr) -> u64 {
        let payload = self
            .control()
            .into_iter()
            .find(|f| f["src_ip"] == ip.to_string())
            .map(|f| unhex(f["payload"].as_str().unwrap()))
            .unwrap();
        u64::from_be_bytes(payload[24..32].try_into().unwrap())
    }

    /// Every frame as it was seen, for a byte-for-byte replay.
    fn replay_lines(&self) -> String {
        self.control()
            .iter()
            .map(|f| serde_json::json!({ "frame": f["frame"] }).to_string() + "\n")
            .collect()
    }
}

/// The forgeries of one segment: the version-1 attack anyone can build from
/// the spec, version 2 with a wrong key (but the right nonces, read off the
/// wire), and genuine datagrams sent again from the attacker's own address.
fn forgeries(
    setup: &Setup,
    captured: &Captured,
    primary: &str,
    link: LinkId,
    attacker_ip: Ipv4Addr,
) -> String {
    let address = |node: NodeId| {
        let host = node.to_u8() + 1;
        if link.0 == 0 {
            setup.repl(host)
        } else {
            setup.front(host)
        }
    };
    let primary = node_id(primary);
    let secondary = primary.peer();
    let wrong_keys = Keys::derive(&PairKey::from_bytes([0x5a; 32]));
    let mut lines = String::new();
    let mut push = |from: NodeId, to: NodeId, message: Message, epoch: u64, version_2: bool| {
        let plain = Datagram {
            sender: from,
            link,
            epoch,
            message,
        }
        .emit();
        let bytes = if version_2 {
            let auth = AuthFields {
                receiver: to,
                nonce: captured.nonce_of(address(from)),
                echo: captured.nonce_of(address(to)),
                seq: 1 << 40,
            };
            seal(&plain, &auth, &wrong_keys.control).unwrap()
        } else {
            plain
        };
        lines += &frame_json(
            &captured.mac_of(address(from)),
            &captured.mac_of(address(to)),
            address(from),
            address(to),
            &bytes,
        );
        lines += "\n";
    };
    for version_2 in [false, true] {
        for (from, to) in [
            (secondary, primary),
            (primary, secondary),
            (primary, NodeId::Witness),
            (secondary, NodeId::Witness),
        ] {
            // The highest epoch, serving, a record naming the sender primary
            // and the receiver Outdated; the sender claiming a host path
            // (what a host-path handover to it needs) and, from the primary,
            // claiming it lost its own (what would make the secondary wait
            // for a handover).
            let lost = from == primary;
            let heartbeat = Heartbeat {
                role: Role::Primary,
                data_state: DataState::UpToDate,
                peer_state: DataState::Outdated,
                flags: flags::SERVING,
                voted_for: Some(from),
                vote_outdated: Some(to),
                record: EpochRecord {
                    epoch: u64::MAX - 1,
                    primary: Some(from),
                    outdated: Some(to),
                },
                incarnation: 1,
                echo: 0,
                host_path: Some(HostPathReport {
                    can_serve: !lost,
                    nic_up: !lost,
                    hears_peer: !lost,
                    hears_witness: !lost,
                }),
            };
            for _ in 0..3 {
                push(from, to, Message::Heartbeat(heartbeat), u64::MAX, version_2);
            }
        }
        // Granted leases and votes for the secondary, and a switchover
        // request to the primary, "from" the witness and the secondary.
        for round in 1..=5 {
            push(
                NodeId::Witness,
                secondary,
                Message::LeaseReply {
                    round,
                    granted: true,
                    refusal: Refusal::None,
                },
                u64::MAX,
                version_2,
            );
            push(
                NodeId::Witness,
                primary,
                Message::LeaseReply {
                    round,
                    granted: false,
                    refusal: Refusal::NotPrimary,
                },
                u64::MAX,
                version_2,
            );
        }
        for epoch in [u64::MAX, 1_000_000] {
            let record = EpochRecord {
                epoch: epoch - 1,
                primary: Some(primary),
                outdated: None,
            };
            push(
                NodeId::Witness,
                secondary,
                Message::VoteReply {
                    granted: true,
                    refusal: Refusal::None,
                    record,
                },
                epoch,
                version_2,
            );
            push(
                primary,
                secondary,
                Message::VoteReply {
                    granted: true,
                    refusal: Refusal::None,
                    record,
                },
                epoch,
                version_2,
            );
            push(
                NodeId::Witness,
                primary,
                Message::VoteRequest {
                    outdated: Some(primary),
                    data_state: DataState::UpToDate,
                    reason: ElectionReason::Failover,
                    record,
                },
                epoch,
                version_2,
            );
        }
        for _ in 0..3 {
            push(secondary, primary, Message::SwitchoverRequest, 0, version_2);
        }
    }
    // Genuine datagrams of this segment, from the attacker's own address.
    for f in captured.control() {
        let payload = unhex(f["payload"].as_str().unwrap());
        let to: Ipv4Addr = f["dst_ip"].as_str().unwrap().parse().unwrap();
        lines += &frame_json(
            "02:00:00:00:00:66",
            f["dst_mac"].as_str().unwrap(),
            attacker_ip,
            to,
            &payload,
        );
        lines += "\n";
    }
    lines
}

#[test]
fn attacks_from_both_segments_change_nothing_and_the_pair_still_fails_over() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces and raw sockets)");
        return;
    }
    if run("python3", &["--version"], Duration::from_secs(10)).code != Some(0) {
        panic!("python3 is needed for the attacker");
    }
    let setup = Setup::new();
    let up = setup.up();
    assert_eq!(up.code, Some(0), "{up}");
    let key = std::fs::read_to_string(setup.file("pair.key"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(key.len(), 64);
    assert!(
        !up.stdout.contains(&key) && !up.stderr.contains(&key),
        "up printed the key\n{up}"
    );

    let (primary, secondary, epoch) = settled_roles(&setup);
    eprintln!("pair settled: {primary} primary, {secondary} secondary, epoch {epoch}");
    let attacker_front = setup.front(ATTACKER_HOST);
    let attacker_repl = setup.repl(ATTACKER_HOST);
    setup.in_netns(&[
        "ip",
        "addr",
        "add",
        &format!("{attacker_repl}/24"),
        "dev",
        "repl",
    ]);

    // Genuine traffic of both segments.
    let capture = |name: &str, seconds: &str| {
        let front = setup.file(&format!("{name}-front.json"));
        let repl = setup.file(&format!("{name}-repl.json"));
        std::thread::scope(|s| {
            s.spawn(|| setup.attacker(&["capture", "fe", seconds, front.to_str().unwrap()]));
            s.spawn(|| setup.attacker(&["capture", "repl", seconds, repl.to_str().unwrap()]));
        });
        (Captured::read(&front), Captured::read(&repl))
    };
    let (front, repl) = capture("genuine", "3");
    assert!(
        front.control().len() > 10 && repl.control().len() > 10,
        "too little captured"
    );
    for c in [&front, &repl] {
        for f in c.control() {
            assert!(
                !f["payload"].as_str().unwrap().contains(&key),
                "a datagram carries the key"
            );
        }
    }

    let before: Vec<Vec<String>> = ["a", "b", "witness"]
        .iter()
        .map(|n| setup.status(n))
        .collect();
    let inject = |iface: &str, name: &str, lines: &str| {
        let path = setup.file(name);
        std::fs::write(&path, lines).unwrap();
        setup.attacker(&["inject", iface, path.to_str().unwrap()]);
    };
    // Forgeries and replays on both segments, while watching what answers.
    std::thread::scope(|s| {
        let watch = s.spawn(|| capture("during", "8"));
        std::thread::sleep(Duration::from_secs(1));
        inject(
            "fe",
            "forged-front.json",
            &forgeries(&setup, &front, primary, LinkId(1), attacker_front),
        );
        inject(
            "repl",
            "forged-repl.json",
            &forgeries(&setup, &repl, primary, LinkId(0), attacker_repl),
        );
        inject("fe", "replay-front.json", &front.replay_lines());
        inject("repl", "replay-repl.json", &repl.replay_lines());
        let (during_front, during_repl) = watch.join().unwrap();
        for f in during_front.frames.iter().chain(during_repl.frames.iter()) {
            let to = f["dst_ip"].as_str().unwrap();
            assert!(
                to != attacker_front.to_string() && to != attacker_repl.to_string(),
                "a member answered the attacker: {f}"
            );
        }
    });

    // The replication stream's port: a wrong key, and the old protocol.
    let handshake: Value = serde_json::from_str(
        setup
            .attacker(&[
                "stream-handshake",
                &setup.repl(2).to_string(),
                &STREAM_PORT.to_string(),
            ])
            .trim(),
    )
    .unwrap();
    assert_eq!(
        handshake["response"].as_str().unwrap().len(),
        2 * 72,
        "b answers a challenge: {handshake}"
    );
    assert_eq!(
        handshake["after_finish"], "",
        "b sent something after a wrong finish: {handshake}"
    );
    assert_eq!(handshake["closed"], true, "{handshake}");
    let hello = Frame {
        sender: NodeId::A,
        epoch: u64::MAX,
        seq: 0,
        body: Body::Hello(Hello {
            role: Role::Primary,
            data_state: DataState::UpToDate,
            features: 0,
            record: EpochRecord {
                epoch: u64::MAX,
                primary: Some(NodeId::A),
                outdated: Some(NodeId::B),
            },
            region_size: 65536,
            region_count: 1,
            data_bytes: 65536,
            data: None,
        }),
    }
    .emit();
    let old: Value = serde_json::from_str(
        setup
            .attacker(&[
                "stream",
                &setup.repl(2).to_string(),
                &STREAM_PORT.to_string(),
                &hex(&hello),
            ])
            .trim(),
    )
    .unwrap();
    assert_eq!(
        (old["received"].as_str(), old["closed"].as_bool()),
        (Some(""), Some(true)),
        "{old}"
    );

    std::thread::sleep(AFTERMATH);
    let after: Vec<Vec<String>> = ["a", "b", "witness"]
        .iter()
        .map(|n| setup.status(n))
        .collect();
    for (i, node) in ["a", "b"].iter().enumerate() {
        let (role, now_epoch) = role_and_epoch(&after[i], node);
        let expected = if *node == primary {
            "primary"
        } else {
            "secondary"
        };
        assert_eq!(
            (role.as_str(), now_epoch),
            (expected, epoch),
            "{node} after the attacks:\n{:#?}",
            after[i]
        );
    }
    for (i, node) in ["a", "b", "witness"].iter().enumerate() {
        for reason in ["malformed", "bad-mac", "wrong-source", "replay"] {
            assert!(
                control(&after[i], reason) > control(&before[i], reason),
                "{node}: no {reason} drops counted\nbefore {:#?}\nafter {:#?}",
                before[i],
                after[i]
            );
        }
        let text = after[i].join("\n");
        assert!(!text.contains(&key), "{node}'s status shows the key");
    }
    let b = &after[1];
    assert_eq!(
        counter(b, "stream connections:", "established"),
        counter(&before[1], "stream connections:", "established"),
        "the stream was replaced: {b:#?}"
    );
    assert!(
        counter(b, "stream connections:", "wrong-key") >= 1,
        "{b:#?}"
    );
    assert!(
        counter(b, "stream connections:", "bad-handshake") >= 1,
        "{b:#?}"
    );

    // A planned switchover, then the captures of the old roles again.
    let socket = setup.dir.path().join(format!("{primary}.console.sock"));
    let mut console = ConsoleClient::connect(&socket, CONSOLE_TIMEOUT).unwrap();
    let answer = console.command("demote", CONSOLE_TIMEOUT).unwrap();
    drop(console);
    let (primary, secondary, epoch) = {
        let deadline = Instant::now() + SETTLE;
        loop {
            let settled = settled_roles(&setup);
            if settled.0 != primary {
                break settled;
            }
            assert!(
                Instant::now() < deadline,
                "demote did not switch over: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    eprintln!("after the switchover: {primary} primary, epoch {epoch}");
    let before: Vec<Vec<String>> = ["a", "b"].iter().map(|n| setup.status(n)).collect();
    inject("fe", "replay-front-2.json", &front.replay_lines());
    inject("repl", "replay-repl-2.json", &repl.replay_lines());
    std::thread::sleep(AFTERMATH);
    for (i, node) in ["a", "b"].iter().enumerate() {
        let now = setup.status(node);
        let expected = if *node == primary {
            "primary"
        } else {
            "secondary"
        };
        assert_eq!(
            role_and_epoch(&now, node),
            (expected.to_string(), epoch),
            "{node}: {now:#?}"
        );
        assert!(
            control(&now, "replay") > control(&before[i], "replay"),
            "{node}: {now:#?}"
        );
    }

    // The witness restarts (a new boot): what was captured in its earlier
    // boot is refused by it and by the data nodes.
    let killed = setup.tandem(&["fault", "kill", "witness"]);
    assert_eq!(killed.code, Some(0), "{killed}");
    let again = setup.up();
    assert_eq!(again.code, Some(0), "{again}");
    settled_roles(&setup);
    std::thread::sleep(Duration::from_secs(3));
    let witness_before = setup.status("witness");
    inject("fe", "replay-front-3.json", &front.replay_lines());
    inject("repl", "replay-repl-3.json", &repl.replay_lines());
    std::thread::sleep(AFTERMATH);
    let witness_after = setup.status("witness");
    assert!(
        control(&witness_after, "old-session") > control(&witness_before, "old-session"),
        "{witness_after:#?}"
    );
    for node in ["a", "b"] {
        let now = setup.status(node);
        let expected = if node == primary {
            "primary"
        } else {
            "secondary"
        };
        assert_eq!(
            role_and_epoch(&now, node),
            (expected.to_string(), epoch),
            "{node}: {now:#?}"
        );
    }

    // The status port (served on net0 by `up`) shows no key either.
    let mut text = String::new();
    TcpStream::connect_timeout(
        &SocketAddr::from((setup.front(1), 8100)),
        Duration::from_secs(5),
    )
    .unwrap()
    .read_to_string(&mut text)
    .unwrap();
    assert!(
        text.contains("control datagrams:") && !text.contains(&key),
        "{text}"
    );
    for node in ["a", "b", "witness"] {
        let log = std::fs::read_to_string(setup.file(&format!("{node}.console.log"))).unwrap();
        assert!(!log.contains(&key), "{node}'s console shows the key");
    }

    // Nothing of this stops a failover.
    let killed = setup.tandem(&["fault", "kill", primary]);
    assert_eq!(killed.code, Some(0), "{killed}");
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = setup.status(secondary);
        let (role, new_epoch) = role_and_epoch(&now, secondary);
        if role == "primary" && now.iter().any(|l| l.contains("ana:optimized")) {
            assert!(new_epoch > epoch && new_epoch < 1_000, "{now:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{secondary} did not take over: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
