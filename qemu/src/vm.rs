//! What a VM is made of, and the QEMU command line for it (pure: no I/O).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use crate::accel::Accel;

/// Name of the QEMU binary; `TANDEM_QEMU` overrides it.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// Debian's (`ipxe-qemu`) iPXE ROM for modern-only virtio-net.
pub const IPXE_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";

/// Memory the image must run in.
pub const DEFAULT_MEMORY_MIB: u32 = 64;

/// The isa-debug-exit device the image writes its exit code to: QEMU then
/// exits with `(value << 1) | 1`.
pub const DEBUG_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

/// Guest ports tandem serves on the front-end NIC.
pub const GUEST_NVME_PORT: u16 = 4420;
pub const GUEST_DISCOVERY_PORT: u16 = 8009;

/// How the image left, read from QEMU's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageExit {
    /// `poweroff` (ACPI) or a QMP `quit`.
    PoweredOff,
    /// The kernel command line was rejected (`tandem: config error: ...`).
    ConfigError,
    /// The image panicked (`tandem: panic: ...`).
    Panic,
    /// Any other status (QEMU's own failure, a signal, a future code).
    Other(Option<i32>),
}

impl ImageExit {
    pub fn from_code(code: Option<i32>) -> Self {
        match code {
            Some(0) => ImageExit::PoweredOff,
            Some(3) => ImageExit::ConfigError,
            Some(5) => ImageExit::Panic,
            other => ImageExit::Other(other),
        }
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered address in QEMU's 52:54:00 range that encodes
    /// the node and NIC, so addresses never clash between nodes of a setup.
    pub fn for_nic(node: u8, nic: u8) -> Self {
        Mac([0x52, 0x54, 0x00, 0x7a, node, nic])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A TCP port forwarded from 127.0.0.1 on the host into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

/// Where a NIC's packets go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// QEMU user networking (guest 10.0.2.15/24, DHCP, host 10.0.2.2),
    /// with host-to-guest TCP forwards and optionally a TFTP server.
    User {
        forwards: Vec<PortForward>,
        tftp: Option<TftpBoot>,
    },
    /// An existing tap device (no up/down scripts).
    Tap { ifname: String },
    /// A multicast segment on the host: every VM joined to `group` shares one
    /// Ethernet (needs multicast on the loopback device).
    Multicast {
        group: SocketAddrV4,
        local: Ipv4Addr,
    },
    /// A point-to-point UDP link between two VMs.
    Datagram {
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
}

/// QEMU's built-in TFTP server for PXE: `dir` served, `bootfile` offered by DHCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpBoot {
    pub dir: PathBuf,
    pub bootfile: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    pub backend: NetBackend,
    pub mac: Mac,
    /// Load an iPXE option ROM on this NIC (forces a modern-only device,
    /// which Debian's ROMs require).
    pub pxe_rom: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
}

/// Where the serial console goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleMode {
    /// A unix socket `DIR/console.sock` (one client at a time).
    Socket,
    /// This process's terminal, multiplexed with QEMU's monitor (Ctrl-A h).
    Stdio,
}

/// How the VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// QEMU loads the image directly (`-kernel`, Multiboot).
    Kernel { image: PathBuf, cmdline: String },
    /// Firmware boots from the network (the first NIC with a PXE ROM).
    Network,
}

/// Everything needed to start one VM.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Short name (used in messages and the QEMU process name).
    pub name: String,
    /// Runtime directory: `<name>.console.sock`, `.console.log`, `.qmp.sock`,
    /// `.qemu.log`, `.pid`.
    pub dir: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub boot: Boot,
    pub disks: Vec<DiskSpec>,
    /// NICs in PCI order: the image numbers them net0, net1, ...
    pub nics: Vec<NicSpec>,
    pub console: ConsoleMode,
    /// Exit QEMU instead of resetting on a guest reboot or triple fault.
    pub no_reboot: bool,
    /// Run QEMU inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Kill QEMU when the thread that started it exits (background `up`
    /// nodes turn this off).
    pub die_with_parent: bool,
    /// Extra QEMU arguments, appended last.
    pub extra_args: Vec<String>,
}

impl VmSpec {
    /// A VM booting `image` with `cmdline`, under `accel`, no devices yet.
    pub fn new(name: &str, dir: &Path, image: &Path, cmdline: &str, accel: Accel) -> Self {
        VmSpec {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            accel,
            memory_mib: DEFAULT_MEMORY_MIB,
            boot: Boot::Kernel {
                image: image.to_path_buf(),
                cmdline: cmdline.to_string(),
            },
            disks: Vec::new(),
            nics: Vec::new(),
            console: ConsoleMode::Socket,
            no_reboot: false,
            netns: None,
            die_with_parent: true,
            extra_args: Vec::new(),
        }
    }

    // Runtime files are named after the VM, so that the nodes of a setup
    // (pair and witness) can share one directory.
    fn runtime_file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.name))
    }
    /// `DIR/<name>.console.sock`: the serial console (socket mode).
    pub fn console_socket(&self) -> PathBuf {
        self.runtime_file("console.sock")
    }
    /// `DIR/<name>.console.log`: everything the guest wrote to its console.
    pub fn console_log(&self) -> PathBuf {
        self.runtime_file("console.log")
    }
    /// `DIR/<name>.qmp.sock`.
    pub fn qmp_socket(&self) -> PathBuf {
        self.runtime_file("qmp.sock")
    }
    /// `DIR/<name>.qemu.log`: QEMU's own stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.runtime_file("qemu.log")
    }
    /// `DIR/<name>.pid`: QEMU's pid while it runs (QEMU removes it on exit).
    pub fn pid_file(&self) -> PathBuf {
        self.runtime_file("pid")
    }

    /// Adds a disk; returns `self` for chaining.
    pub fn disk(mut self, path: &Path) -> Self {
        self.disks.push(DiskSpec {
            path: path.to_path_buf(),
        });
        self
    }

    /// Adds a NIC with a MAC derived from `node` and its index.
    pub fn nic(mut self, node: u8, backend: NetBackend) -> Self {
        let mac = Mac::for_nic(node, self.nics.len() as u8);
        self.nics.push(NicSpec {
            backend,
            mac,
            pxe_rom: None,
        });
        self
    }

    /// Host ports forwarded on user-networking NICs (to check they are free).
    pub fn host_ports(&self) -> Vec<u16> {
        self.nics
            .iter()
            .filter_map(|nic| match &nic.backend {
                NetBackend::User { forwards, .. } => Some(forwards.iter().map(|f| f.host)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The QEMU arguments (without the program name) for this VM.
    pub fn qemu_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.push("-name")
            .push(format!("tandem-{},process=tandem-{}", self.name, self.name));
        a.push("-M").push("q35");
        a.push("-nodefaults").push("-no-user-config");
        a.push("-display").push("none");
        a.push("-m").push(format!("{}M", self.memory_mib));
        a.extend(self.accel.qemu_args());
        a.push("-device").push(DEBUG_EXIT_DEVICE);
        if self.no_reboot {
            a.push("-no-reboot");
        }
        match &self.boot {
            Boot::Kernel { image, cmdline } => {
                a.push("-kernel").push(image.as_os_str());
                a.push("-append").push(cmdline.as_str());
            }
            Boot::Network => {
                a.push("-boot").push("n");
            }
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let mut drive = OsString::from("file=");
            drive.push(qemu_escape_path(&disk.path));
            // discard=unmap: the guest's discards punch holes in the file
            // (QEMU's default, discard=ignore, drops them). The device offers
            // discard and write-zeroes by default (QEMU ≥ 4.0).
            drive.push(format!(
                ",if=none,id=d{i},format=raw,cache=writeback,discard=unmap"
            ));
            a.push("-drive").push(drive);
            a.push("-device")
                .push(format!("virtio-blk-pci,drive=d{i},id=disk{i}"));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            a.push("-netdev").push(netdev_arg(i, &nic.backend));
            let mut device = OsString::from(format!(
                "virtio-net-pci,netdev=n{i},id=nic{i},mac={}",
                nic.mac
            ));
            match &nic.pxe_rom {
                Some(rom) => {
                    device.push(",disable-legacy=on,romfile=");
                    device.push(qemu_escape_path(rom));
                }
                // No option ROM: faster firmware, and no dependency on ipxe-qemu.
                None => device.push(",romfile="),
            }
            a.push("-device").push(device);
        }
        let mut chardev = match self.console {
            ConsoleMode::Socket => {
                let mut c = OsString::from("socket,id=ser0,path=");
                c.push(qemu_escape_path(&self.console_socket()));
                c.push(",server=on,wait=off");
                c
            }
            ConsoleMode::Stdio => OsString::from("stdio,id=ser0,mux=on,signal=on"),
        };
        chardev.push(",logfile=");
        chardev.push(qemu_escape_path(&self.console_log()));
        a.push("-chardev").push(chardev);
        a.push("-serial").push("chardev:ser0");
        if self.console == ConsoleMode::Stdio {
            a.push("-mon").push("chardev=ser0,mode=readline");
        }
        a.push("-pidfile").push(self.pid_file().as_os_str());
        let mut qmp = OsString::from("unix:");
        qmp.push(qemu_escape_path(&self.qmp_socket()));
        qmp.push(",server=on,wait=off");
        a.push("-qmp").push(qmp);
        for extra in &self.extra_args {
            a.push(extra.as_str());
        }
        a.0
    }
}

fn netdev_arg(i: usize, backend: &NetBackend) -> OsString {
    let mut s = OsString::new();
    match backend {
        NetBackend::User { forwards, tftp } => {
            s.push(format!("user,id=n{i}"));
            for f in forwards {
                s.push(format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
            }
            if let Some(t) = tftp {
                s.push(",tftp=");
                s.push(qemu_escape_path(&t.dir));
                s.push(format!(",bootfile={}", t.bootfile));
            }
        }
        NetBackend::Tap { ifname } => {
            s.push(format!(
                "tap,id=n{i},ifname={ifname},script=no,downscript=no"
            ));
        }
        NetBackend::Multicast { group, local } => {
            s.push(format!("socket,id=n{i},mcast={group},localaddr={local}"));
        }
        NetBackend::Datagram { local, remote } => s.push(format!(
            "dgram,id=n{i},local.type=inet,local.host={},local.port={},\
             remote.type=inet,remote.host={},remote.port={}",
            local.ip(),
            local.port(),
            remote.ip(),
            remote.port()
        )),
    }
    s
}

/// QEMU option values separate with commas; a literal comma is doubled.
fn qemu_escape_path(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.0.push(arg.into());
        self
    }
    fn extend<'a>(&mut self, args: impl IntoIterator<Item = &'a str>) {
        self.0.extend(args.into_iter().map(OsString::from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(spec: &VmSpec) -> Vec<String> {
        spec.qemu_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_plain_node_gets_the_documented_machine() {
        let spec = VmSpec::new(
            "a",
            Path::new("/run/t"),
            Path::new("/img"),
            "log=info",
            Accel::Tcg,
        )
        .disk(Path::new("/d/0.img"))
        .nic(
            1,
            NetBackend::User {
                forwards: vec![PortForward {
                    host: 18100,
                    guest: 8100,
                }],
                tftp: None,
            },
        );
        let args = strings(&spec);
        let line = args.join(" ");
        assert!(line.contains("-M q35 -nodefaults"), "{line}");
        assert!(
            line.contains("-display none -m 64M -accel tcg -cpu max"),
            "{line}"
        );
        assert_eq!(after(&args, "-kernel"), ["/img"]);
        assert_eq!(after(&args, "-append"), ["log=info"]);
        assert_eq!(
            after(&args, "-drive"),
            ["file=/d/0.img,if=none,id=d0,format=raw,cache=writeback,discard=unmap"]
        );
        assert_eq!(
            after(&args, "-device"),
            [
                DEBUG_EXIT_DEVICE,
                "virtio-blk-pci,drive=d0,id=disk0",
                "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:7a:01:00,romfile="
            ]
        );
        assert_eq!(
            after(&args, "-netdev"),
            ["user,id=n0,hostfwd=tcp:127.0.0.1:18100-:8100"]
        );
        assert_eq!(
            after(&args, "-chardev"),
            [
                "socket,id=ser0,path=/run/t/a.console.sock,server=on,wait=off,logfile=/run/t/a.console.log"
            ]
        );
        assert_eq!(after(&args, "-serial"), ["chardev:ser0"]);
        assert_eq!(
            after(&args, "-qmp"),
            ["unix:/run/t/a.qmp.sock,server=on,wait=off"]
        );
        assert_eq!(after(&args, "-pidfile"), ["/run/t/a.pid"]);
        assert!(!args.contains(&"-no-reboot".to_string()));
        assert!(!args.contains(&"-mon".to_string()));
        assert_eq!(spec.host_ports(), [18100]);
    }

    #[test]
    fn nics_and_disks_are_numbered_in_order() {
        let mut spec = VmSpec::new("b", Path::new("/r"), Path::new("/img"), "", Accel::Kvm)
            .disk(Path::new("/d0"))
            .disk(Path::new("/d1"))
            .nic(
                2,
                NetBackend::Tap {
                    ifname: "tap0".into(),
                },
            )
            .nic(
                2,
                NetBackend::Multicast {
                    group: "230.0.0.1:5000".parse().unwrap(),
                    local: Ipv4Addr::LOCALHOST,
                },
            )
            .nic(
                2,
                NetBackend::Datagram {
                    local: "127.0.0.1:6000".parse().unwrap(),
                    remote: "127.0.0.1:6001".parse().unwrap(),
                },
            );
        spec.no_reboot = true;
        spec.memory_mib = 32;
        let args = strings(&spec);
        assert!(
            args.join(" ")
                .contains("-m 32M -accel kvm -cpu host,-arch-capabilities")
        );
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(
            after(&args, "-netdev"),
            [
                "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "socket,id=n1,mcast=230.0.0.1:5000,localaddr=127.0.0.1",
                "dgram,id=n2,local.type=inet,local.host=127.0.0.1,local.port=6000,\
                 remote.type=inet,remote.host=127.0.0.1,remote.port=6001",
            ]
        );
        let devices = after(&args, "-device");
        assert_eq!(devices[1], "virtio-blk-pci,drive=d0,id=disk0");
        assert_eq!(devices[2], "virtio-blk-pci,drive=d1,id=disk1");
        assert_eq!(
            devices[5],
            "virtio-net-pci,netdev=n2,id=nic2,mac=52:54:00:7a:02:02,romfile="
        );
        assert!(spec.host_ports().is_empty());
    }

    #[test]
    fn pxe_boot_uses_the_ipxe_rom_on_a_modern_only_nic() {
        let mut spec = VmSpec::new("p", Path::new("/r"), Path::new("/img"), "", Accel::Tcg).nic(
            0,
            NetBackend::User {
                forwards: vec![],
                tftp: Some(TftpBoot {
                    dir: "/srv/tftp".into(),
                    bootfile: "boot.ipxe".into(),
                }),
            },
        );
        spec.boot = Boot::Network;
        spec.nics[0].pxe_rom = Some(IPXE_VIRTIO_ROM.into());
        let args = strings(&spec);
        assert!(!args.contains(&"-kernel".to_string()));
        assert_eq!(after(&args, "-boot"), ["n"]);
        assert_eq!(
            after(&args, "-netdev"),
            ["user,id=n0,tftp=/srv/tftp,bootfile=boot.ipxe"]
        );
        assert_eq!(
            after(&args, "-device")[1],
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:7a:00:00,disable-legacy=on,\
             romfile=/usr/lib/ipxe/qemu/pxe-virtio.rom"
        );
    }

    #[test]
    fn terminal_console_is_muxed_with_the_monitor_and_still_logged() {
        let mut spec = VmSpec::new("t", Path::new("/r"), Path::new("/img"), "", Accel::Tcg);
        spec.console = ConsoleMode::Stdio;
        let args = strings(&spec);
        assert_eq!(
            after(&args, "-chardev"),
            ["stdio,id=ser0,mux=on,signal=on,logfile=/r/t.console.log"]
        );
        assert_eq!(after(&args, "-mon"), ["chardev=ser0,mode=readline"]);
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let spec = VmSpec::new("c", Path::new("/r,x"), Path::new("/img"), "", Accel::Tcg)
            .disk(Path::new("/a,b.img"));
        let args = strings(&spec);
        assert_eq!(
            after(&args, "-drive")[0],
            "file=/a,,b.img,if=none,id=d0,format=raw,cache=writeback,discard=unmap"
        );
        assert_eq!(
            after(&args, "-qmp")[0],
            "unix:/r,,x/c.qmp.sock,server=on,wait=off"
        );
    }

    #[test]
    fn exit_codes_map_to_the_image_contract() {
        assert_eq!(ImageExit::from_code(Some(0)), ImageExit::PoweredOff);
        assert_eq!(ImageExit::from_code(Some(3)), ImageExit::ConfigError);
        assert_eq!(ImageExit::from_code(Some(5)), ImageExit::Panic);
        assert_eq!(ImageExit::from_code(Some(1)), ImageExit::Other(Some(1)));
        assert_eq!(ImageExit::from_code(None), ImageExit::Other(None));
    }
}
