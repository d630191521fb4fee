//! The image boots, serves its status over TCP, answers on its serial
//! console, and rejects a bad command line cleanly.

use tandem_qemu::{Node, TempDir, disk, free_port};
use tandem_tests::{COMMAND_TIMEOUT, EXIT_TIMEOUT, READY_TIMEOUT, fetch_status, tcg_vm, user_nic};

#[test]
fn boots_to_ready_with_a_dhcp_address() {
    let dir = TempDir::new("ready").unwrap();
    let spec = tcg_vm("ready", dir.path(), "").nic(0, user_nic(&[]));
    let mut node = Node::spawn(spec).unwrap();
    let ready = node.wait_ready(READY_TIMEOUT).unwrap();
    // QEMU user networking hands out 10.0.2.15/24 by DHCP.
    assert_eq!(ready.address(0), Some("10.0.2.15/24"), "{ready:?}");
    assert!(
        ready.ms > 0 && ready.ms < READY_TIMEOUT.as_millis() as u64,
        "{ready:?}"
    );
    let log = node.console_log();
    assert_eq!(
        log.matches("tandem: ready ").count(),
        1,
        "exactly one ready line per boot:\n{log}"
    );
    assert!(!log.contains("tandem: panic"), "{log}");
}

#[test]
fn status_port_answers_through_hostfwd() {
    let dir = TempDir::new("status").unwrap();
    let disk_path = dir.path().join("disk0.img");
    disk::create_sparse(&disk_path, 8 << 20).unwrap();
    let port = free_port().unwrap();
    let spec = tcg_vm("status", dir.path(), "status_port=8100")
        .disk(&disk_path)
        .nic(0, user_nic(&[(port, 8100)]));
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    let text = fetch_status(port, COMMAND_TIMEOUT);
    assert!(text.contains("uptime"), "{text}");
    assert!(text.contains("memory"), "{text}");
    let net0 = text
        .lines()
        .find(|l| l.starts_with("net0 "))
        .unwrap_or_else(|| panic!("no net0 line:\n{text}"));
    for field in [
        "mac=52:54:00:7a:00:00",
        "ip=10.0.2.15",
        "link=",
        "rx=",
        "tx=",
    ] {
        assert!(net0.contains(field), "`{field}` missing from `{net0}`");
    }
    let disk0 = text
        .lines()
        .find(|l| l.starts_with("disk0 "))
        .unwrap_or_else(|| panic!("no disk0 line:\n{text}"));
    assert!(disk0.contains("size=8388608"), "an 8 MiB disk: {disk0}");
    // A second connection gets a fresh answer (the service keeps listening).
    assert!(fetch_status(port, COMMAND_TIMEOUT).contains("uptime"));
}

#[test]
fn console_answers_status_and_rejects_bad_commands() {
    let dir = TempDir::new("console").unwrap();
    let disk_path = dir.path().join("disk0.img");
    disk::create_sparse(&disk_path, 4 << 20).unwrap();
    let spec = tcg_vm("console", dir.path(), "")
        .disk(&disk_path)
        .nic(0, user_nic(&[]));
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    let mut console = node.console(COMMAND_TIMEOUT).unwrap();

    let status = console.command("status", COMMAND_TIMEOUT).unwrap();
    let has = |prefix: &str| status.iter().any(|l| l.trim_start().starts_with(prefix));
    assert!(status.iter().any(|l| l.contains("memory")), "{status:#?}");
    // `uptime U s, busy B s`: the loop's own time (boot included), which an
    // idle machine spends almost all halted.
    let times = |status: &[String]| -> (f64, f64) {
        let uptime = status
            .iter()
            .find(|l| l.starts_with("uptime "))
            .unwrap_or_else(|| panic!("{status:#?}"));
        let seconds: Vec<f64> = uptime
            .split(|c: char| c == ' ' || c == ',')
            .filter_map(|w| w.parse().ok())
            .collect();
        let [up, busy] = seconds[..] else {
            panic!("{uptime}")
        };
        assert!(busy > 0.0 && busy <= up, "{uptime}");
        (up, busy)
    };
    let (up_before, busy_before) = times(&status);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (up_after, busy_after) = times(&console.command("status", COMMAND_TIMEOUT).unwrap());
    assert!(
        busy_after - busy_before < (up_after - up_before) / 2.0,
        "idle for {:.3} s, busy for {:.3} s of it",
        up_after - up_before,
        busy_after - busy_before
    );
    assert!(has("net0 ") && has("disk0 "), "{status:#?}");
    let net0 = status.iter().find(|l| l.starts_with("net0 ")).unwrap();
    assert!(
        net0.contains("mac=52:54:00:7a:00:00") && net0.contains("ip=10.0.2.15"),
        "{net0}"
    );
    let disk0 = status.iter().find(|l| l.starts_with("disk0 ")).unwrap();
    assert!(disk0.contains("size=4194304"), "a 4 MiB disk: {disk0}");

    let bogus = console.command("frobnicate now", COMMAND_TIMEOUT).unwrap();
    assert_eq!(bogus.len(), 1, "{bogus:#?}");
    assert!(bogus[0].starts_with("error: unknown command"), "{bogus:#?}");

    for bad_argument in ["log loud", "disk fill 0 x 1 1", "disk verify"] {
        let answer = console.command(bad_argument, COMMAND_TIMEOUT).unwrap();
        assert_eq!(answer.len(), 1, "{bad_argument}: {answer:#?}");
        assert!(
            answer[0].starts_with("error: "),
            "{bad_argument}: {answer:#?}"
        );
    }

    let help = console.command("help", COMMAND_TIMEOUT).unwrap().join("\n");
    for command in ["status", "log", "poweroff", "reboot", "disk"] {
        assert!(
            help.contains(command),
            "help does not mention {command}:\n{help}"
        );
    }
    // A good `log` command gives no error, and the console still works after
    // all of the above.
    let answer = console.command("log info", COMMAND_TIMEOUT).unwrap();
    assert!(
        !answer.iter().any(|l| l.starts_with("error:")),
        "{answer:#?}"
    );

    console
        .command_no_prompt("poweroff", COMMAND_TIMEOUT)
        .unwrap();
    let status = node.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(status.code(), Some(0), "poweroff should make QEMU exit 0");
}

#[test]
fn bad_command_line_values_give_one_error_line_and_exit_3() {
    for (cmdline, key) in [
        ("log=loud", "log"),
        ("net0=10.0.0.300/24", "net0"),
        ("status_port=http", "status_port"),
        ("frobnicate=1", "frobnicate"),
        // A pair member needs the pair's key; a bad key is refused without
        // being shown.
        ("node=a peer=10.0.0.2", "pair_key"),
        ("role=witness node_a=10.0.0.1 node_b=10.0.0.2", "pair_key"),
        ("pair_key=0123456789abcdef0123456789abcdef", "pair_key"),
    ] {
        let dir = TempDir::new("badcmd").unwrap();
        let spec = tcg_vm("badcmd", dir.path(), cmdline).nic(0, user_nic(&[]));
        let mut node = Node::spawn(spec).unwrap();
        let prefix = format!("tandem: config error: {key}: ");
        let line = node
            .wait_for_line(&prefix, READY_TIMEOUT, |l| l.starts_with("tandem: "))
            .unwrap_or_else(|e| panic!("{cmdline}: {e}"));
        assert!(
            line.starts_with(&prefix) && line.len() > prefix.len(),
            "{cmdline}: got `{line}`"
        );
        let status = node.wait_exit(EXIT_TIMEOUT).unwrap();
        assert_eq!(status.code(), Some(3), "{cmdline}: QEMU exit status");
        let log = node.console_log();
        assert_eq!(
            log.matches("tandem: config error").count(),
            1,
            "{cmdline}: one error line:\n{log}"
        );
        assert!(
            !log.contains("tandem: ready") && !log.contains("tandem: panic"),
            "{cmdline}:\n{log}"
        );
        assert!(
            !log.contains("0123456789abcdef"),
            "the key was printed:\n{log}"
        );
    }
}
