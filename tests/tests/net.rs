//! Two NICs come up with their own addresses; the image answers ping on a
//! NIC attached to a tap device in a network namespace this test creates.

use tandem_qemu::{NetBackend, Node, TempDir};
use tandem_tests::{COMMAND_TIMEOUT, Netns, READY_TIMEOUT, is_root, skip, tcg_vm, user_nic};

#[test]
fn two_nics_get_their_own_addresses_and_answer_ping() {
    if !is_root() {
        skip(
            "two_nics_get_their_own_addresses_and_answer_ping",
            "needs root to create a network namespace and a tap device",
        );
        return;
    }
    let ns = Netns::new("ping");
    ns.exec("ip", &["tuntap", "add", "dev", "tap0", "mode", "tap"]);
    ns.exec("ip", &["addr", "add", "192.168.77.1/24", "dev", "tap0"]);
    ns.exec("ip", &["link", "set", "tap0", "up"]);

    let dir = TempDir::new("ping").unwrap();
    let mut spec = tcg_vm("ping", dir.path(), "net0=dhcp net1=192.168.77.2/24")
        .nic(0, user_nic(&[]))
        .nic(
            0,
            NetBackend::Tap {
                ifname: "tap0".into(),
            },
        );
    spec.netns = Some(ns.name.clone());
    let mut node = Node::spawn(spec).unwrap();
    let ready = node.wait_ready(READY_TIMEOUT).unwrap();
    assert_eq!(ready.address(0), Some("10.0.2.15/24"), "{ready:?}");
    assert_eq!(ready.address(1), Some("192.168.77.2/24"), "{ready:?}");

    let mut console = node.console(COMMAND_TIMEOUT).unwrap();
    let status = console.command("status", COMMAND_TIMEOUT).unwrap();
    let line = |name: &str| {
        status
            .iter()
            .find(|l| l.starts_with(name))
            .cloned()
            .unwrap_or_default()
    };
    assert!(line("net0 ").contains("ip=10.0.2.15"), "{status:#?}");
    assert!(
        line("net1 ").contains("ip=192.168.77.2")
            && line("net1 ").contains("mac=52:54:00:7a:00:01"),
        "{status:#?}"
    );

    // -W bounds each reply; -w bounds the whole run.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "5",
            "-w",
            "15",
            "192.168.77.2",
        ])
        .output()
        .expect("running ping");
    let out = String::from_utf8_lossy(&ping.stdout);
    let after = console.command("status", COMMAND_TIMEOUT).unwrap();
    let net1_after = after
        .iter()
        .find(|l| l.starts_with("net1 "))
        .cloned()
        .unwrap_or_default();
    assert!(
        ping.status.success() && out.contains("3 received"),
        "no echo replies from 192.168.77.2 on the tap NIC\n{out}\nguest before: {}\nguest after:  {net1_after}",
        line("net1 ")
    );
    // The counters moved on the NIC that was pinged.
    assert_ne!(line("net1 "), net1_after);
}
