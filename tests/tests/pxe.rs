//! PXE: QEMU's iPXE ROM fetches an `#!ipxe` script and the image over TFTP
//! (QEMU user networking's built-in server), and the image reaches ready.

use std::path::Path;
use std::time::Duration;

use tandem_qemu::vm::IPXE_VIRTIO_ROM;
use tandem_qemu::{Boot, NetBackend, Node, PortForward, TempDir, TftpBoot, free_port};
use tandem_tests::{COMMAND_TIMEOUT, fetch_status, image, tcg_vm};

/// iPXE shows its prompt for 2 s and DHCP takes a few more under TCG.
const PXE_READY_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn ipxe_loads_the_image_over_tftp_and_it_gets_ready() {
    assert!(
        Path::new(IPXE_VIRTIO_ROM).is_file(),
        "{IPXE_VIRTIO_ROM} is missing: apt-get install -y --no-install-recommends ipxe-qemu"
    );
    let dir = TempDir::new("pxe").unwrap();
    let tftp = dir.path().join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::copy(image(), tftp.join("tandem-image")).unwrap();
    std::fs::write(
        tftp.join("boot.ipxe"),
        "#!ipxe\nkernel tftp://10.0.2.2/tandem-image status_port=8123\nboot\n",
    )
    .unwrap();

    let port = free_port().unwrap();
    let mut spec = tcg_vm("pxe", dir.path(), "").nic(
        0,
        NetBackend::User {
            forwards: vec![PortForward {
                host: port,
                guest: 8123,
            }],
            tftp: Some(TftpBoot {
                dir: tftp,
                bootfile: "boot.ipxe".into(),
            }),
        },
    );
    spec.boot = Boot::Network;
    spec.nics[0].pxe_rom = Some(IPXE_VIRTIO_ROM.into());
    let mut node = Node::spawn(spec).unwrap();
    let ready = node.wait_ready(PXE_READY_TIMEOUT).unwrap();
    assert_eq!(ready.address(0), Some("10.0.2.15/24"), "{ready:?}");
    // The arguments from the iPXE script reached the image: the status
    // service listens on the port the script named.
    let text = fetch_status(port, COMMAND_TIMEOUT);
    assert!(
        text.contains("uptime") && text.contains("ip=10.0.2.15"),
        "{text}"
    );
}
