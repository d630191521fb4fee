//! A legacy-only virtio device (QEMU `disable-modern=on`) gets a console
//! error naming it, and the machine still comes up with what it can drive.

use tandem_qemu::{Node, TempDir, disk};
use tandem_tests::{READY_TIMEOUT, tcg_vm, user_nic};

#[test]
fn legacy_only_virtio_device_is_named_on_the_console() {
    let dir = TempDir::new("legacy").unwrap();
    let disk_path = dir.path().join("legacy.img");
    disk::create_sparse(&disk_path, 8 << 20).unwrap();
    let mut spec = tcg_vm("legacy", dir.path(), "status_port=0").nic(0, user_nic(&[]));
    spec.extra_args.extend([
        "-drive".to_string(),
        format!("file={},if=none,id=legacy0,format=raw", disk_path.display()),
        "-device".to_string(),
        "virtio-blk-pci,drive=legacy0,disable-modern=on,disable-legacy=off".to_string(),
    ]);
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    let log = node.console_log();
    let line = log
        .lines()
        .find(|l| l.starts_with("tandem: error: virtio device 1af4:1001"))
        .unwrap_or_else(|| panic!("no error line for the legacy device:\n{log}"));
    assert!(line.contains("legacy-only"), "{line}");
    assert!(
        line.contains("disable-modern=on"),
        "the line says what to change: {line}"
    );
    assert!(
        !log.contains("disk0:"),
        "the legacy disk must not be used:\n{log}"
    );
    assert!(!log.contains("tandem: panic"), "{log}");
}
