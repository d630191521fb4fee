//! QMP on a running node: the primitives `cargo tandem fault` will use
//! (link down/up, pause/resume, quit) act on the guest as expected.

use std::time::Duration;

use tandem_qemu::{Node, TempDir};
use tandem_tests::{COMMAND_TIMEOUT, EXIT_TIMEOUT, READY_TIMEOUT, tcg_vm, user_nic};

const QMP_TIMEOUT: Duration = Duration::from_secs(20);

fn net0_line(console: &mut tandem_qemu::ConsoleClient) -> String {
    let status = console.command("status", COMMAND_TIMEOUT).unwrap();
    status
        .into_iter()
        .find(|l| l.starts_with("net0 "))
        .expect("a net0 line")
}

#[test]
fn link_pause_and_quit_through_qmp() {
    let dir = TempDir::new("qmp").unwrap();
    let spec = tcg_vm("qmp", dir.path(), "").nic(0, user_nic(&[]));
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    let mut console = node.console(COMMAND_TIMEOUT).unwrap();
    let mut qmp = node.qmp(QMP_TIMEOUT).unwrap();

    assert_eq!(qmp.status().unwrap(), "running");
    assert!(net0_line(&mut console).contains("link=up"));
    qmp.set_link("n0", false).unwrap();
    assert!(
        net0_line(&mut console).contains("link=down"),
        "the guest sees the link drop"
    );
    qmp.set_link("nic0", true).unwrap();
    assert!(
        net0_line(&mut console).contains("link=up"),
        "device ids work too"
    );
    assert!(
        qmp.set_link("n9", false).is_err(),
        "an unknown NIC is an error"
    );

    qmp.stop().unwrap();
    assert_eq!(qmp.status().unwrap(), "paused");
    qmp.cont().unwrap();
    assert_eq!(qmp.status().unwrap(), "running");
    assert!(
        net0_line(&mut console).contains("ip=10.0.2.15"),
        "the console works after resume"
    );

    qmp.quit().unwrap();
    node.wait_exit(EXIT_TIMEOUT).unwrap();
}
