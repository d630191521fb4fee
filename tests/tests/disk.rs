//! A block pattern written through virtio-blk lands in the disk file and
//! reads back identical after a reboot of the VM.

use std::fs::OpenOptions;

use tandem_qemu::{Node, TempDir, disk};
use tandem_tests::{COMMAND_TIMEOUT, READY_TIMEOUT, tcg_vm, user_nic};

#[test]
fn pattern_survives_a_reboot_and_is_in_the_disk_file() {
    let dir = TempDir::new("disk").unwrap();
    let path = dir.path().join("disk0.img");
    disk::create_sparse(&path, 8 << 20).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Written by the host, to be read by the guest: the read path on its own.
    disk::write_pattern(&file, 1000, 16, 7).unwrap();

    let spec = tcg_vm("disk", dir.path(), "")
        .disk(&path)
        .nic(0, user_nic(&[]));
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    let mut console = node.console(COMMAND_TIMEOUT).unwrap();

    assert_eq!(
        console
            .command("disk verify 0 1000 16 7", COMMAND_TIMEOUT)
            .unwrap(),
        ["disk 0: verified 16 sectors"]
    );
    assert_eq!(
        console
            .command("disk verify 0 1000 16 8", COMMAND_TIMEOUT)
            .unwrap(),
        ["disk 0: mismatch at lba 1000"],
        "a wrong seed must not verify"
    );

    assert_eq!(
        console
            .command("disk fill 0 100 64 42", COMMAND_TIMEOUT)
            .unwrap(),
        ["disk 0: wrote 64 sectors"]
    );
    // The data is in the file QEMU writes (cache=writeback: the host page cache).
    assert_eq!(
        disk::verify_pattern(&file, 100, 64, 42).unwrap(),
        None,
        "pattern in the disk file"
    );
    assert!(
        disk::sectors_are_zero(&file, 99, 1).unwrap(),
        "the sector before the range is untouched"
    );
    assert!(
        disk::sectors_are_zero(&file, 164, 1).unwrap(),
        "the sector after the range is untouched"
    );

    console
        .command_no_prompt("reboot", COMMAND_TIMEOUT)
        .unwrap();
    node.wait_ready(READY_TIMEOUT)
        .expect("a second ready line after reboot");
    assert_eq!(
        node.console_log().matches("tandem: ready ").count(),
        2,
        "one ready line per boot"
    );

    // The console socket stays connected across the guest's reset.
    assert_eq!(
        console
            .command("disk verify 0 100 64 42", COMMAND_TIMEOUT)
            .unwrap(),
        ["disk 0: verified 64 sectors"]
    );
    assert_eq!(
        console
            .command("disk verify 0 99 2 42", COMMAND_TIMEOUT)
            .unwrap(),
        ["disk 0: mismatch at lba 99"],
        "the sector before the range was never written"
    );
    // Beyond the end of the disk (8 MiB = 16384 sectors) is an argument error.
    let beyond = console
        .command("disk verify 0 16380 8 42", COMMAND_TIMEOUT)
        .unwrap();
    assert!(
        beyond.len() == 1 && beyond[0].starts_with("error: "),
        "{beyond:#?}"
    );
}
