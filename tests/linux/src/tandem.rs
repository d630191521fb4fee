//! The tandem image as an NVMe/TCP target on a [`Rig`](crate::scenario::Rig)'s
//! segment, for the stock Linux host to test and measure against.
//!
//! The image is built by `tandem_qemu::build_image` (its own target dir) and
//! booted by `tandem_qemu::Node` inside the rig's network namespace, with its
//! first NIC on the segment at [`TANDEM_ADDRESS`] and one virtio-blk disk
//! (namespace 1). Its serial console drives it (`nvme`, `reboot`) while the
//! Linux guests run.

use crate::NetBackend;
use crate::error::{Error, Result};
use crate::image::guest_dir;
use crate::scenario::{Endpoint, GuestShape, PREFIX_LEN};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tandem_qemu::{Accel, ConsoleClient, Node, Ready, VmSpec};

/// tandem's address on the segment (next to Linux's nvmet-tcp at .10, so
/// that both can serve one initiator at once).
pub const TANDEM_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
/// The subsystem NQN and serial tandem is started with.
pub const TANDEM_NQN: &str = "nqn.2026-11.io.tandem.test:linux-host";
pub const TANDEM_SERIAL: &str = "tandemlinux0001";
/// Console commands are answered at once; allow for a busy two-core host.
pub const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The tandem image, built once per process.
pub fn tandem_image() -> Result<PathBuf> {
    static IMAGE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| tandem_qemu::build_image().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Tandem(format!("building the image: {e}")))
}

/// A running tandem image on a segment.
pub struct TandemTarget {
    pub node: Node,
    /// The I/O subsystem (port 4420 unless the command line says otherwise).
    pub endpoint: Endpoint,
    /// The discovery subsystem's port.
    pub discovery_port: u16,
    console: Option<ConsoleClient>,
}

impl TandemTarget {
    /// Boots the image named `name` in namespace `netns` with its NIC on
    /// `backend`, `disk` as namespace 1, and `extra_cmdline` appended to the
    /// command line (e.g. `log=debug`). Not awaited: see [`Self::wait_ready`].
    pub fn spawn(
        name: &str,
        netns: &str,
        backend: NetBackend,
        disk: &Path,
        shape: GuestShape,
        extra_cmdline: &str,
    ) -> Result<TandemTarget> {
        let image = tandem_image()?;
        let backend = match backend {
            NetBackend::Tap { ifname } => tandem_qemu::NetBackend::Tap { ifname },
            NetBackend::Mcast { group, port } => tandem_qemu::NetBackend::Multicast {
                group: std::net::SocketAddrV4::new(group, port),
                local: Ipv4Addr::LOCALHOST,
            },
            NetBackend::Dgram { .. } => {
                return Err(Error::InvalidConfig(
                    "a tandem target joins a segment (tap or multicast), not a point-to-point link"
                        .into(),
                ));
            }
        };
        let cmdline = format!(
            "net0={TANDEM_ADDRESS}/{PREFIX_LEN} nqn={TANDEM_NQN} serial={TANDEM_SERIAL} {extra_cmdline}"
        );
        let dir = guest_dir().join("runs");
        let mut spec = VmSpec::new(name, &dir, &image, cmdline.trim(), Accel::Tcg)
            .disk(disk)
            .nic(0, backend);
        spec.memory_mib = shape.memory_mib;
        if shape.vcpus > 1 {
            spec.extra_args = vec!["-smp".into(), shape.vcpus.to_string()];
        }
        spec.netns = Some(netns.to_string());
        let node = Node::spawn(spec)?;
        Ok(TandemTarget {
            node,
            endpoint: Endpoint {
                address: TANDEM_ADDRESS,
                port: 4420,
                subnqn: TANDEM_NQN.to_string(),
            },
            discovery_port: 8009,
            console: None,
        })
    }

    /// Waits for the next `tandem: ready` line (it listens from then on).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready> {
        Ok(self.node.wait_ready(timeout)?)
    }

    /// Runs a console command and returns its output lines.
    pub fn command(&mut self, command: &str) -> Result<Vec<String>> {
        if self.console.is_none() {
            self.console = Some(self.node.console(CONSOLE_TIMEOUT)?);
        }
        let console = self.console.as_mut().expect("connected above");
        Ok(console.command(command, CONSOLE_TIMEOUT)?)
    }

    /// `reboot` on the console, then waits for the next ready line.
    pub fn reboot(&mut self, timeout: Duration) -> Result<Ready> {
        if self.console.is_none() {
            self.console = Some(self.node.console(CONSOLE_TIMEOUT)?);
        }
        let console = self.console.as_mut().expect("connected above");
        console.command_no_prompt("reboot", CONSOLE_TIMEOUT)?;
        self.wait_ready(timeout)
    }

    /// Everything the image wrote to its console so far (all boots).
    pub fn console_log(&self) -> String {
        self.node.console_log()
    }

    /// The last `lines` lines of the console log.
    pub fn console_tail(&self, lines: usize) -> String {
        tandem_qemu::console::log_tail(&self.node.spec().console_log(), lines)
    }

    /// `poweroff` on the console; waits for QEMU to exit (killed if it does
    /// not within `timeout`). Fails if the image panicked at any time.
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        let log = self.console_log();
        if let Some(console) = self.console.as_mut() {
            let _ = console.command_no_prompt("poweroff", CONSOLE_TIMEOUT);
        } else if let Ok(mut console) = self.node.console(CONSOLE_TIMEOUT) {
            let _ = console.command_no_prompt("poweroff", CONSOLE_TIMEOUT);
        }
        let exited = self.node.wait_exit(timeout);
        self.node.kill();
        if log.contains(tandem_qemu::console::PANIC_PREFIX) {
            return Err(Error::Tandem(format!(
                "the image panicked:\n{}",
                self.console_tail(40)
            )));
        }
        exited.map(drop).map_err(Error::from)
    }
}
