//! `cargo tandem up`, `fault`, `console`, `status` and `down` end to end:
//! the `tandem` binary starts a, b and the witness in the background, and
//! the tests check what a user would see from this machine. They need root
//! (network namespaces, taps, veths) and are skipped with a notice otherwise.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem_qemu::pair::SetupDir;
use tandem_qemu::{ConsoleClient, TempDir};

/// Bound on one `tandem` invocation (an `up` may build the image first).
const COMMAND_LIMIT: Duration = Duration::from_secs(600);
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces and taps)");
            return;
        }
    };
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

/// Runs `tandem ARGS` with `stdin` as its input, killed after `limit`.
fn tandem_with_input(args: &[&str], stdin: &str, limit: Duration) -> Outcome {
    let out_dir = TempDir::new("pair-cmd").unwrap();
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("starting tandem");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
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
        "tandem {args:?} still ran after {limit:?}\n{outcome}"
    );
    outcome
}

fn tandem(args: &[&str]) -> Outcome {
    tandem_with_input(args, "", COMMAND_LIMIT)
}

/// A setup directory and subnets of its own; `down` on drop, so a failing
/// test leaves nothing running.
struct Setup {
    dir: TempDir,
    front: [u8; 3],
    repl: [u8; 3],
}

impl Setup {
    /// `variant` keeps the subnets of tests in one process apart; the pid
    /// keeps them apart from other test runs on this machine.
    fn new(label: &str, variant: u32) -> Setup {
        let third = ((std::process::id() * 3 + variant) % 250) as u8;
        Setup {
            dir: TempDir::new(label).unwrap(),
            front: [10, 213, third],
            repl: [10, 214, third],
        }
    }

    fn dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn front_net(&self) -> String {
        let [a, b, c] = self.front;
        format!("{a}.{b}.{c}.0/24")
    }

    fn repl_net(&self) -> String {
        let [a, b, c] = self.repl;
        format!("{a}.{b}.{c}.0/24")
    }

    fn front_address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.front;
        Ipv4Addr::new(a, b, c, host)
    }

    fn up(&self, extra: &[&str]) -> Outcome {
        let front = self.front_net();
        let repl = self.repl_net();
        let mut args = vec![
            "up",
            "--dir",
            self.dir(),
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
        ];
        args.extend_from_slice(extra);
        tandem(&args)
    }

    fn run(&self, command: &[&str]) -> Outcome {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--dir", self.dir()]);
        tandem(&args)
    }

    fn console_socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.console.sock"))
    }

    fn names(&self) -> tandem_qemu::layout::NetNames {
        SetupDir::open(self.dir.path()).names
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = tandem(&["down", "--dir", self.dir()]);
    }
}

fn can_connect(address: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((address, port)), timeout).is_ok()
}

/// Whether a listener at `address:port` accepts a connection and keeps it
/// open, waiting for the host's first PDU, as a serving portal does. A
/// connection that is not accepted, or is reset or closed at once (the
/// peer's address claimed by the new primary, which refuses hosts under
/// its peer's name), is not served.
fn portal_serves(address: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::from((address, port)), timeout)
    else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Retries a TCP connection, once a second, until it is accepted — or, with
/// `refusal_answers`, refused or reset (answered, not left to time out) — or
/// `limit` passes (the host's neighbour entry may need a moment after a link
/// comes back or an address moves).
fn answered_within(address: Ipv4Addr, port: u16, limit: Duration, refusal_answers: bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&SocketAddr::from((address, port)), Duration::from_secs(1))
        {
            Ok(_) => return true,
            Err(e)
                if refusal_answers
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
            {
                return true;
            }
            Err(_) if Instant::now() >= deadline => return false,
            Err(_) => {}
        }
    }
}

fn connects_within(address: Ipv4Addr, port: u16, limit: Duration) -> bool {
    answered_within(address, port, limit, false)
}

/// The node's `status` line for NIC `nic`.
fn nic_line(console: &mut ConsoleClient, nic: usize) -> String {
    let lines = console.command("status", CONSOLE_TIMEOUT).unwrap();
    lines
        .iter()
        .find(|l| l.starts_with(&format!("net{nic} ")))
        .cloned()
        .unwrap_or_else(|| panic!("no net{nic} line in {lines:?}"))
}

/// Pids of live processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_str().unwrap().as_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

fn assert_nothing_left(setup: &Setup) {
    let names = setup.names();
    assert!(
        processes_mentioning(setup.dir.path()).is_empty(),
        "QEMU processes left: {:?}",
        processes_mentioning(setup.dir.path())
    );
    assert!(
        !Path::new("/run/netns").join(&names.netns).exists(),
        "namespace {} left",
        names.netns
    );
    for link in [&names.host_link, &names.user_link] {
        assert!(
            !Path::new("/sys/class/net").join(link).exists(),
            "interface {link} left"
        );
    }
}

#[test]
fn up_serves_portals_takes_faults_and_down_removes_everything() {
    require_root!();
    let setup = Setup::new("pair-up", 0);
    let a = setup.front_address(1);
    let b = setup.front_address(2);
    let witness = setup.front_address(3);

    let up = setup.up(&[]);
    assert_eq!(up.code, Some(0), "{up}");
    for portal in [format!("{a}:4420"), format!("{b}:4420")] {
        assert!(up.stdout.contains(&portal), "no portal {portal}\n{up}");
    }
    for node in ["a", "b", "witness"] {
        assert!(
            up.stderr.contains(&format!("tandem: {node:<7} ready in")),
            "{node} not reported ready\n{up}"
        );
        let log = setup.dir.path().join(format!("{node}.console.log"));
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("tandem: ready "), "{node}: {log}");
    }
    for disk in ["a.disk.img", "b.disk.img"] {
        let meta = std::fs::metadata(setup.dir.path().join(disk)).unwrap();
        assert_eq!(meta.len(), 64 << 20, "{disk}");
    }
    assert!(!setup.dir.path().join("witness.disk.img").exists());

    // The portals (and the witness's status port) from this machine.
    assert!(can_connect(a, 4420, CONNECT_TIMEOUT), "a:4420 unreachable");
    assert!(can_connect(b, 4420, CONNECT_TIMEOUT), "b:4420 unreachable");
    let mut witness_status = String::new();
    TcpStream::connect_timeout(&SocketAddr::from((witness, 8100)), CONNECT_TIMEOUT)
        .expect("witness status port")
        .read_to_string(&mut witness_status)
        .unwrap();
    assert!(
        witness_status.contains(&format!("ip={witness}/24")),
        "{witness_status}"
    );

    // A second `up` finds everything running and starts nothing.
    let again = setup.up(&[]);
    assert_eq!(again.code, Some(0), "{again}");
    assert_eq!(
        again.stderr.matches("already running").count(),
        3,
        "{again}"
    );

    // The console command, piped: one command per line, returns after the answer.
    let piped = tandem_with_input(
        &["console", "a", "--dir", setup.dir()],
        "status\n",
        Duration::from_secs(60),
    );
    assert_eq!(piped.code, Some(0), "{piped}");
    assert!(
        piped.stdout.contains(&format!("ip={a}/24")),
        "no net0 line\n{piped}"
    );

    // link-down on the front-end: the guest sees it, and this machine gets
    // no NVMe service at a's portal (the link is cut; if a was primary, b
    // takes a's address over after the handover and refuses hosts there);
    // link-up restores both.
    let down = setup.run(&["fault", "link-down", "a", "net0"]);
    assert_eq!(down.code, Some(0), "{down}");
    {
        let mut console =
            ConsoleClient::connect(&setup.console_socket("a"), CONSOLE_TIMEOUT).unwrap();
        let net0 = nic_line(&mut console, 0);
        assert!(net0.contains("link=down"), "{net0}");
        let net1 = nic_line(&mut console, 1);
        assert!(net1.contains("link=up"), "only net0 was cut: {net1}");
        assert!(
            !portal_serves(a, 4420, Duration::from_secs(2)),
            "a:4420 served with net0 down"
        );
        let up = setup.run(&["fault", "link-up", "a"]);
        assert_eq!(up.code, Some(0), "{up}");
        let net0 = nic_line(&mut console, 0);
        assert!(net0.contains("link=up"), "{net0}");
    }
    assert!(
        connects_within(a, 4420, Duration::from_secs(20)),
        "a:4420 unreachable after link-up"
    );

    // pause: the console does not answer until resume; status says paused.
    let pause = setup.run(&["fault", "pause", "b"]);
    assert_eq!(pause.code, Some(0), "{pause}");
    let status = setup.run(&["status"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("b ") && l.contains("paused")),
        "{status}"
    );
    {
        let mut console =
            ConsoleClient::connect(&setup.console_socket("b"), CONSOLE_TIMEOUT).unwrap();
        let answer = console.command("status", Duration::from_secs(3));
        assert!(answer.is_err(), "a paused node answered: {answer:?}");
        let resume = setup.run(&["fault", "resume", "b"]);
        assert_eq!(resume.code, Some(0), "{resume}");
        let net0 = nic_line(&mut console, 0);
        assert!(net0.contains(&format!("ip={b}/24")), "{net0}");
    }

    // isolate: a loses both links to b and the witness (it reports them
    // unreachable), this machine still reaches every portal; rejoin undoes it.
    let isolate = setup.run(&["fault", "isolate", "a"]);
    assert_eq!(isolate.code, Some(0), "{isolate}");
    let ports_isolated = |on: bool| {
        for node in ["a", "b", "witness"] {
            let out = Command::new("bridge")
                .args(["-n", &setup.names().netns, "-d", "link", "show", "dev"])
                .arg(format!("{node}-fe"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let want = if on { "isolated on" } else { "isolated off" };
            assert!(text.contains(want), "{node}-fe: want {want}: {text}");
        }
    };
    ports_isolated(true);
    {
        let mut console =
            ConsoleClient::connect(&setup.console_socket("a"), CONSOLE_TIMEOUT).unwrap();
        let net1 = nic_line(&mut console, 1);
        assert!(net1.contains("link=down"), "{net1}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = console.command("status", CONSOLE_TIMEOUT).unwrap();
            let peers: Vec<&String> = lines.iter().filter(|l| l.contains("reachable:")).collect();
            if !peers.is_empty() && peers.iter().all(|l| l.contains("reachable:false")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a still reaches a peer while isolated: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The host's path stays up: it is answered by a itself or, once b has
    // claimed a's silent portal address (front-end takeover), by b's refusal
    // (a reset). While the host's neighbour entry moves from a to b one
    // attempt may go unanswered.
    assert!(
        answered_within(a, 4420, Duration::from_secs(15), true),
        "isolated a's portal does not answer the host"
    );
    // b may be claiming a's address right now (its neighbours are told
    // again to smoltcp, which forgets them then): a SYN may go unanswered.
    assert!(
        connects_within(b, 4420, Duration::from_secs(15)),
        "b unreachable from the host"
    );
    let rejoin = setup.run(&["fault", "rejoin", "a"]);
    assert_eq!(rejoin.code, Some(0), "{rejoin}");
    ports_isolated(false);
    {
        let mut console =
            ConsoleClient::connect(&setup.console_socket("a"), CONSOLE_TIMEOUT).unwrap();
        let net1 = nic_line(&mut console, 1);
        assert!(net1.contains("link=up"), "{net1}");
    }

    // kill: QEMU is gone at once; `up` starts that node alone again.
    let pid_before = std::fs::read_to_string(setup.dir.path().join("witness.pid")).unwrap();
    let kill = setup.run(&["fault", "kill", "witness"]);
    assert_eq!(kill.code, Some(0), "{kill}");
    let pid: u32 = pid_before.trim().parse().unwrap();
    assert!(
        !processes_mentioning(setup.dir.path()).contains(&pid),
        "witness QEMU {pid} still alive"
    );
    let status = setup.run(&["status"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("witness ") && l.contains("stopped")),
        "{status}"
    );
    assert!(!can_connect(witness, 8100, Duration::from_secs(2)));
    let restart = setup.up(&[]);
    assert_eq!(restart.code, Some(0), "{restart}");
    assert!(
        restart.stderr.contains("tandem: witness ready in"),
        "{restart}"
    );
    assert_eq!(
        restart.stderr.matches("already running").count(),
        2,
        "{restart}"
    );
    assert!(setup.dir.path().join("witness.console.log.1").exists());

    // down: nothing left; and again: still fine.
    let down = setup.run(&["down"]);
    assert_eq!(down.code, Some(0), "{down}");
    assert_eq!(down.stderr.matches("tandem: stopped").count(), 3, "{down}");
    assert_nothing_left(&setup);
    let again = setup.run(&["down"]);
    assert_eq!(again.code, Some(0), "{again}");
    assert!(again.stderr.contains("nothing was running"), "{again}");
    // Disks and logs stay.
    assert!(setup.dir.path().join("a.disk.img").exists());
    assert!(setup.dir.path().join("b.console.log").exists());

    let fault = setup.run(&["fault", "pause", "a"]);
    assert_eq!(fault.code, Some(2), "{fault}");
    assert!(fault.stderr.contains("node a: not running"), "{fault}");
}

#[test]
fn up_names_the_node_that_failed_and_leaves_nothing_running() {
    require_root!();
    let setup = Setup::new("pair-fail", 1);
    let up = setup.up(&["--append-b", "log=loud"]);
    assert_eq!(up.code, Some(2), "{up}");
    assert!(up.stderr.contains("node b: "), "{up}");
    assert!(up.stderr.contains("config error: log"), "{up}");
    assert_nothing_left(&setup);
}

#[test]
fn bridge_puts_the_front_end_on_the_users_bridge() {
    require_root!();
    let setup = Setup::new("pair-br", 2);
    // The user's bridge, with this machine's address on the front-end.
    let bridge = format!("tdtest{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {args:?}");
    };
    ip(&["link", "add", &bridge, "type", "bridge"]);
    struct RemoveBridge(String);
    impl Drop for RemoveBridge {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _cleanup = RemoveBridge(bridge.clone());
    let host = format!("{}/24", setup.front_address(200));
    ip(&["addr", "add", &host, "dev", &bridge]);
    ip(&["link", "set", &bridge, "up"]);

    let up = setup.up(&["--bridge", &bridge, "--no-host-link", "--no-ha"]);
    assert_eq!(up.code, Some(0), "{up}");
    assert!(up.stderr.contains(&format!("on bridge {bridge}")), "{up}");
    assert!(
        !up.stderr.contains("node=a"),
        "--no-ha passed HA keys\n{up}"
    );
    let names = setup.names();
    assert!(!Path::new("/sys/class/net").join(&names.host_link).exists());
    let master = std::fs::read_link(
        Path::new("/sys/class/net")
            .join(&names.user_link)
            .join("master"),
    )
    .unwrap();
    assert!(master.ends_with(&bridge), "{master:?}");
    // Reached through the user's bridge alone.
    assert!(connects_within(
        setup.front_address(1),
        4420,
        Duration::from_secs(20)
    ));
    assert!(connects_within(
        setup.front_address(2),
        4420,
        Duration::from_secs(20)
    ));

    let down = setup.run(&["down"]);
    assert_eq!(down.code, Some(0), "{down}");
    assert_nothing_left(&setup);
    assert!(
        Path::new("/sys/class/net").join(&bridge).exists(),
        "the user's bridge must stay"
    );
}
