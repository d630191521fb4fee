//! One Linux guest: its configuration, QEMU command line, and a run.

use crate::error::{Error, Result};
use crate::image::{GuestImage, guest_dir, tail_lines};
use crate::netns::Netns;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long QEMU gets after its timeout's TERM before KILL, and how long the
/// harness waits past that before killing the whole process group itself.
const KILL_GRACE: Duration = Duration::from_secs(5);
const HARNESS_GRACE: Duration = Duration::from_secs(10);

/// What a guest NIC is plugged into. Every variant stays on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// Point-to-point Ethernet over UDP: frames go to `remote`, arrive on
    /// `local`. Both must be loopback addresses. Two guests use mirrored pairs.
    Dgram {
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// A shared segment (a hub): UDP multicast to `group:port` on 127.0.0.1.
    /// Needs `lo` with multicast on, so use it in a [`Netns`]
    /// (see [`GuestConfig::in_netns`]).
    Mcast { group: Ipv4Addr, port: u16 },
    /// An existing tap device (create it with [`Netns::add_tap`]).
    Tap { ifname: String },
}

impl NetBackend {
    /// QEMU's `-netdev` value for this backend with netdev id `id`: also for
    /// another QEMU (e.g. the tandem image) joining a [`crate::scenario::Rig`]'s
    /// segment; that QEMU must run inside the rig's namespace
    /// (`ip netns exec NAME …`).
    pub fn netdev_arg(&self, id: &str) -> String {
        match self {
            NetBackend::Dgram { local, remote } => format!(
                "dgram,id={id},local.type=inet,local.host={},local.port={},remote.type=inet,remote.host={},remote.port={}",
                local.ip(),
                local.port(),
                remote.ip(),
                remote.port()
            ),
            NetBackend::Mcast { group, port } => {
                format!("socket,id={id},mcast={group}:{port},localaddr=127.0.0.1")
            }
            NetBackend::Tap { ifname } => {
                format!("tap,id={id},ifname={ifname},script=no,downscript=no")
            }
        }
    }
}

/// A virtio-net NIC: ethN in the guest, in the order given.
#[derive(Debug, Clone)]
pub struct Nic {
    pub backend: NetBackend,
    /// `ADDR/PREFIX` configured on ethN by /init (`tg.ipN`), e.g. `10.0.0.1/24`.
    pub address: Option<String>,
    /// Default: derived from the guest name and the NIC index.
    pub mac: Option<[u8; 6]>,
}

impl Nic {
    pub fn new(backend: NetBackend, address: &str) -> Nic {
        Nic {
            backend,
            address: Some(address.to_string()),
            mac: None,
        }
    }
}

/// A virtio-blk disk (/dev/vda, /dev/vdb, … in the order given): a raw file.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything that defines one guest run.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Names the run directory `<guest dir>/runs/<name>`: unique among guests
    /// running at the same time.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub nics: Vec<Nic>,
    pub disks: Vec<Disk>,
    /// Shell script (busybox sh) run by /init; `. /usr/lib/tg/lib.sh` gives
    /// helpers (tg_retry, tg_wait_file, tg_mark, tg_nvme_dev, tg_fail).
    pub script: String,
    /// Exported to the script (written as `env.sh` into the share).
    pub env: Vec<(String, String)>,
    /// Extra kernel command line words (e.g. `nvme_core.io_timeout=10`,
    /// `tg.hostnqn=…`).
    pub kernel_args: Vec<String>,
    /// Limit on the QEMU process itself (boot + script + power-off).
    pub timeout: Duration,
    /// Run QEMU inside this network namespace.
    pub netns: Option<String>,
    /// Open a QMP socket (`<run dir>/qmp.sock`) for [`RunningGuest::qmp`].
    pub qmp: bool,
}

impl GuestConfig {
    /// 1 vCPU, 1 GiB, no NIC, no disk, 120 s.
    pub fn new(name: &str, script: &str) -> GuestConfig {
        GuestConfig {
            name: name.to_string(),
            vcpus: 1,
            memory_mib: 1024,
            nics: Vec::new(),
            disks: Vec::new(),
            script: script.to_string(),
            env: Vec::new(),
            kernel_args: Vec::new(),
            timeout: Duration::from_secs(120),
            netns: None,
            qmp: false,
        }
    }
    pub fn nic(mut self, backend: NetBackend, address: &str) -> Self {
        self.nics.push(Nic::new(backend, address));
        self
    }
    pub fn disk(mut self, path: &Path) -> Self {
        self.disks.push(Disk {
            path: path.to_path_buf(),
            read_only: false,
        });
        self
    }
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_string());
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    pub fn in_netns(mut self, netns: &Netns) -> Self {
        self.netns = Some(netns.name().to_string());
        self
    }
    pub fn with_qmp(mut self) -> Self {
        self.qmp = true;
        self
    }

    /// The run directory (9p share, console log, QMP socket).
    pub fn run_dir(&self) -> PathBuf {
        guest_dir().join("runs").join(&self.name)
    }

    /// Checks what would otherwise fail late or send traffic off the machine.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidConfig(why));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!(
                "guest name {:?} must be non-empty [A-Za-z0-9_-]",
                self.name
            ));
        }
        if self.nics.len() > 8 {
            return bad(format!(
                "{} NICs: /init configures at most 8",
                self.nics.len()
            ));
        }
        if self.vcpus == 0 || self.memory_mib < 512 {
            return bad("need at least 1 vCPU and 512 MiB (the initramfs unpacks ~95 MB)".into());
        }
        for nic in &self.nics {
            match &nic.backend {
                NetBackend::Dgram { local, remote } => {
                    for a in [local, remote] {
                        if !a.ip().is_loopback() {
                            return Err(Error::NotLoopback {
                                address: a.to_string(),
                            });
                        }
                    }
                }
                NetBackend::Mcast { group, .. } => {
                    if !group.is_multicast() {
                        return bad(format!("{group} is not a multicast group"));
                    }
                }
                NetBackend::Tap { ifname } => {
                    if self.netns.is_none() {
                        return bad(format!(
                            "tap {ifname} outside a network namespace this harness created"
                        ));
                    }
                }
            }
            if let Some(a) = &nic.address
                && (a.split_whitespace().count() != 1 || !a.contains('/'))
            {
                return bad(format!("NIC address {a:?} must be ADDR/PREFIX"));
            }
        }
        for (k, _) in &self.env {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad(format!("environment name {k:?}"));
            }
        }
        Ok(())
    }

    /// MAC of NIC `index`: the configured one, or 52:54:00 + a hash of the
    /// guest name + the index (distinct guests on one segment get distinct MACs).
    pub fn mac(&self, index: usize) -> [u8; 6] {
        if let Some(mac) = self.nics.get(index).and_then(|n| n.mac) {
            return mac;
        }
        let mut h: u32 = 0x811c_9dc5;
        for b in self.name.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        [0x52, 0x54, 0x00, (h >> 8) as u8, h as u8, index as u8]
    }

    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_string(),
            "panic=-1".into(),
            "quiet".into(),
        ];
        for (i, nic) in self.nics.iter().enumerate() {
            if let Some(a) = &nic.address {
                words.push(format!("tg.ip{i}={a}"));
            }
        }
        words.extend(self.kernel_args.iter().cloned());
        words.join(" ")
    }

    /// QEMU's arguments (without the program), given the image and run dir.
    pub fn qemu_args(&self, image: &GuestImage, run_dir: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-display",
            "none",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        push("-smp", self.vcpus.to_string());
        push("-m", self.memory_mib.to_string());
        push(
            "-serial",
            format!("file:{}", run_dir.join("console.log").display()),
        );
        push("-kernel", image.kernel.display().to_string());
        push("-initrd", image.initramfs.display().to_string());
        push("-append", self.kernel_cmdline());
        push(
            "-virtfs",
            format!(
                "local,path={},mount_tag=host0,security_model=none,id=host0",
                run_dir.join("share").display()
            ),
        );
        for (i, nic) in self.nics.iter().enumerate() {
            let netdev = nic.backend.netdev_arg(&format!("n{i}"));
            push("-netdev", netdev);
            let m = self.mac(i);
            push(
                "-device",
                format!(
                    "virtio-net-pci,netdev=n{i},id=nic{i},mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                ),
            );
        }
        for (i, d) in self.disks.iter().enumerate() {
            push(
                "-drive",
                format!(
                    "file={},if=none,id=d{i},format=raw,cache=writeback,aio=threads{}",
                    d.path.display(),
                    if d.read_only { ",readonly=on" } else { "" }
                ),
            );
            push("-device", format!("virtio-blk-pci,drive=d{i},id=blk{i}"));
        }
        if self.qmp {
            push(
                "-qmp",
                format!(
                    "unix:{},server=on,wait=off",
                    run_dir.join("qmp.sock").display()
                ),
            );
        }
        a
    }

    /// `env.sh` for the share: `export K='V'` lines.
    pub fn env_script(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            let _ = writeln!(s, "export {k}='{}'", v.replace('\'', r"'\''"));
        }
        s
    }
}

/// What a finished guest left behind.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    pub name: String,
    /// The script's exit status; None when the guest never wrote one (it
    /// crashed, timed out, or /init failed before the script).
    pub status: Option<i32>,
    /// The script's stdout and stderr.
    pub output: String,
    /// The serial console (kernel messages, /init, and the script's output).
    pub console: String,
    pub timed_out: bool,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
    /// The 9p share: files the script wrote into $TG_SHARE are here.
    pub share: PathBuf,
}

impl GuestOutcome {
    pub fn succeeded(&self) -> bool {
        self.status == Some(0) && !self.timed_out
    }

    /// Ok when the script exited 0; otherwise an error carrying the tails of
    /// its output and of the console.
    pub fn check(&self) -> Result<&GuestOutcome> {
        if self.succeeded() {
            return Ok(self);
        }
        Err(Error::ScriptFailed {
            guest: self.name.clone(),
            status: self.status,
            output_tail: tail_lines(&self.output, 40),
            console_tail: tail_lines(&self.console, 40),
        })
    }
}

/// A guest whose QEMU is running. Dropping it kills QEMU.
pub struct RunningGuest {
    name: String,
    run_dir: PathBuf,
    pgid: i32,
    started: Instant,
    limit: Duration,
    exit_rx: Receiver<std::io::Result<ExitStatus>>,
    exited: Option<ExitStatus>,
}

/// Boots a guest and waits for it to power off: spawn + wait.
pub fn run(image: &GuestImage, config: &GuestConfig) -> Result<GuestOutcome> {
    spawn(image, config)?.wait()
}

/// Boots a guest that runs alongside the caller.
pub fn spawn(image: &GuestImage, config: &GuestConfig) -> Result<RunningGuest> {
    config.validate()?;
    let run_dir = config.run_dir();
    let share = run_dir.join("share");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .map_err(|e| Error::io(format!("clearing {}", run_dir.display()), e))?;
    }
    std::fs::create_dir_all(&share)
        .map_err(|e| Error::io(format!("creating {}", share.display()), e))?;
    let write = |name: &str, text: &str| {
        let p = share.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    write("script.sh", &config.script)?;
    write("env.sh", &config.env_script())?;

    let timeout_secs = config.timeout.as_secs().max(1).to_string();
    let kill_after = format!("{}s", KILL_GRACE.as_secs());
    let mut cmd = match &config.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "timeout"]);
            c
        }
        None => Command::new("timeout"),
    };
    cmd.args(["-k", &kill_after, &timeout_secs, "qemu-system-x86_64"]);
    cmd.args(config.qemu_args(image, &run_dir));
    let log = std::fs::File::create(run_dir.join("qemu.log"))
        .map_err(|e| Error::io("creating qemu.log", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("duplicating qemu.log", e))?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("starting timeout + qemu-system-x86_64", e))?;
    let pgid = child.id() as i32;
    let (tx, exit_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    Ok(RunningGuest {
        name: config.name.clone(),
        run_dir,
        pgid,
        started,
        limit: config.timeout,
        exit_rx,
        exited: None,
    })
}

impl RunningGuest {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The process group of the guest's QEMU (and its `timeout` wrapper).
    pub fn process_group(&self) -> i32 {
        self.pgid
    }
    /// The host side of the guest's $TG_SHARE.
    pub fn share_dir(&self) -> PathBuf {
        self.run_dir.join("share")
    }
    pub fn console_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
    pub fn console_tail(&self, lines: usize) -> String {
        let raw = std::fs::read(self.console_path()).unwrap_or_default();
        tail_lines(&String::from_utf8_lossy(&raw), lines)
    }

    /// True once QEMU has exited.
    pub fn has_exited(&mut self) -> bool {
        if self.exited.is_none()
            && let Ok(status) = self.exit_rx.try_recv()
        {
            self.exited = Some(status.unwrap_or_else(|_| ExitStatus::default()));
        }
        self.exited.is_some()
    }

    /// Waits until the guest's script calls `tg_mark NAME` (the file
    /// $TG_SHARE/NAME appears); fails early if the guest stops.
    pub fn wait_for_mark(&mut self, mark: &str, timeout: Duration) -> Result<()> {
        let path = self.share_dir().join(mark);
        let deadline = Instant::now() + timeout;
        loop {
            if path.exists() {
                return Ok(());
            }
            if self.has_exited() {
                let output = std::fs::read_to_string(self.share_dir().join("output.log"))
                    .unwrap_or_default();
                return Err(Error::GuestEnded {
                    guest: self.name.clone(),
                    waiting_for: mark.to_string(),
                    output_tail: tail_lines(&output, 30),
                    console_tail: self.console_tail(30),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::MarkTimedOut {
                    guest: self.name.clone(),
                    mark: mark.to_string(),
                    after: timeout,
                    console_tail: self.console_tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Drops the file $TG_SHARE/NAME, which the guest awaits with `tg_wait_file`.
    pub fn signal(&self, name: &str) -> Result<()> {
        let p = self.share_dir().join(name);
        std::fs::write(&p, b"").map_err(|e| Error::io(format!("writing {}", p.display()), e))
    }

    /// Sends one QMP command (a JSON object, e.g.
    /// `{"execute":"set_link","arguments":{"name":"nic0","up":false}}`) and
    /// returns the response line. Needs [`GuestConfig::with_qmp`].
    pub fn qmp(&self, command: &str) -> Result<String> {
        use std::io::{BufRead, BufReader, Write};
        use std::os::unix::net::UnixStream;
        let path = self.run_dir.join("qmp.sock");
        let ctx = |what: &str| format!("QMP {what} on {}", path.display());
        let stream = UnixStream::connect(&path).map_err(|e| Error::io(ctx("connect"), e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| Error::io(ctx("timeout"), e))?;
        let mut writer = stream.try_clone().map_err(|e| Error::io(ctx("clone"), e))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let read_reply = |reader: &mut BufReader<UnixStream>, line: &mut String| -> Result<()> {
            // Skip asynchronous events; the reply has "return" or "error".
            loop {
                line.clear();
                if reader
                    .read_line(line)
                    .map_err(|e| Error::io(ctx("read"), e))?
                    == 0
                {
                    return Err(Error::io(
                        ctx("read"),
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                if line.contains("\"return\"")
                    || line.contains("\"error\"")
                    || line.contains("\"QMP\"")
                {
                    return Ok(());
                }
            }
        };
        read_reply(&mut reader, &mut line)?; // greeting
        writer
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .map_err(|e| Error::io(ctx("write"), e))?;
        read_reply(&mut reader, &mut line)?;
        writer
            .write_all(command.as_bytes())
            .and_then(|_| writer.write_all(b"\n"))
            .map_err(|e| Error::io(ctx("write"), e))?;
        read_reply(&mut reader, &mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// Waits for QEMU to exit (the guest powers off after its script, or the
    /// timeout on QEMU fires) and collects the outcome.
    pub fn wait(mut self) -> Result<GuestOutcome> {
        let limit = self.limit + KILL_GRACE + HARNESS_GRACE;
        let mut timed_out = false;
        if self.exited.is_none() {
            let left = limit.saturating_sub(self.started.elapsed());
            match self.exit_rx.recv_timeout(left) {
                Ok(status) => self.exited = Some(status.unwrap_or_else(|_| ExitStatus::default())),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    self.kill();
                    timed_out = true;
                    let _ = self.exit_rx.recv_timeout(Duration::from_secs(5));
                }
            }
        }
        let elapsed = self.started.elapsed();
        // `timeout` exits 124 when it had to stop QEMU (137 after KILL).
        if let Some(code) = self.exited.and_then(|s| s.code()) {
            timed_out |= code == 124 || code == 137;
        }
        let share = self.share_dir();
        let output = std::fs::read(share.join("output.log")).unwrap_or_default();
        let console = std::fs::read(self.console_path()).unwrap_or_default();
        let status = std::fs::read_to_string(share.join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let outcome = GuestOutcome {
            name: self.name.clone(),
            status,
            output: String::from_utf8_lossy(&output).into_owned(),
            console: String::from_utf8_lossy(&console).into_owned(),
            timed_out,
            elapsed,
            share,
        };
        if timed_out {
            return Err(Error::GuestTimedOut {
                guest: self.name.clone(),
                after: elapsed,
                console_tail: tail_lines(&outcome.console, 30),
            });
        }
        Ok(outcome)
    }

    /// Kills QEMU (and the `timeout` above it) now.
    pub fn kill(&mut self) {
        if !self.has_exited() {
            // SAFETY: kill(2) on the process group this harness created.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            kernel_version: "6.1".into(),
        }
    }

    #[test]
    fn command_line_carries_nic_addresses_and_extra_args() {
        let c = GuestConfig::new("a", "true")
            .nic(
                NetBackend::Mcast {
                    group: Ipv4Addr::new(230, 0, 0, 1),
                    port: 5000,
                },
                "10.0.0.1/24",
            )
            .nic(
                NetBackend::Tap {
                    ifname: "t1".into(),
                },
                "10.0.1.1/24",
            )
            .kernel_arg("nvme_core.io_timeout=10");
        assert_eq!(
            c.kernel_cmdline(),
            "console=ttyS0 panic=-1 quiet tg.ip0=10.0.0.1/24 tg.ip1=10.0.1.1/24 nvme_core.io_timeout=10"
        );
    }

    #[test]
    fn qemu_args_have_tcg_netdevs_disks_and_share() {
        let c = GuestConfig::new("tgt", "true")
            .nic(
                NetBackend::Dgram {
                    local: "127.0.0.1:4001".parse().unwrap(),
                    remote: "127.0.0.1:4002".parse().unwrap(),
                },
                "10.0.0.1/24",
            )
            .disk(Path::new("/d.raw"))
            .with_qmp();
        let a = c.qemu_args(&image(), Path::new("/run"));
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg,thread=multi -cpu max"));
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains(
            "-netdev dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=4001,remote.type=inet,remote.host=127.0.0.1,remote.port=4002"
        ));
        assert!(joined.contains("-device virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:"));
        assert!(joined.contains("-drive file=/d.raw,if=none,id=d0,format=raw"));
        assert!(joined.contains("-device virtio-blk-pci,drive=d0,id=blk0"));
        assert!(joined.contains("-virtfs local,path=/run/share,mount_tag=host0"));
        assert!(joined.contains("-qmp unix:/run/qmp.sock,server=on,wait=off"));
        // -append is one argument.
        let i = a.iter().position(|x| x == "-append").unwrap();
        assert!(a[i + 1].starts_with("console=ttyS0 panic=-1"));
    }

    #[test]
    fn off_machine_addresses_are_refused() {
        let c = GuestConfig::new("x", "true").nic(
            NetBackend::Dgram {
                local: "127.0.0.1:4001".parse().unwrap(),
                remote: "10.1.2.3:4002".parse().unwrap(),
            },
            "10.0.0.1/24",
        );
        assert!(matches!(c.validate(), Err(Error::NotLoopback { .. })));
        let tap_outside_netns = GuestConfig::new("x", "true").nic(
            NetBackend::Tap {
                ifname: "t0".into(),
            },
            "10.0.0.1/24",
        );
        assert!(matches!(
            tap_outside_netns.validate(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(GuestConfig::new("bad name", "true").validate().is_err());
    }

    #[test]
    fn macs_differ_between_guests_and_nics() {
        let a = GuestConfig::new("a", "");
        let b = GuestConfig::new("b", "");
        assert_ne!(a.mac(0), b.mac(0));
        assert_ne!(a.mac(0), a.mac(1));
        assert_eq!(a.mac(0)[0] & 1, 0, "unicast");
    }

    #[test]
    fn env_values_are_single_quoted() {
        let c = GuestConfig::new("a", "").env("X", "it's $HOME");
        assert_eq!(c.env_script(), "export X='it'\\''s $HOME'\n");
    }
}
