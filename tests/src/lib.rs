//! Integration tests that boot the tandem image under QEMU (TCG), and the
//! helpers they share. The tests themselves are in `tests/`.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tandem_qemu::{Accel, NetBackend, PortForward, VmSpec};

pub use tandem_qemu;

pub mod nvme;

/// Boot to ready under TCG takes well under a second on an idle machine;
/// this allows for a loaded two-core CI host.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// One console command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// QEMU exiting after poweroff or a configuration error.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The image, built once per test binary.
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| match tandem_qemu::build_image() {
        Ok(path) => path,
        Err(e) => panic!("building the image failed: {e}"),
    })
}

/// A TCG VM booting the image with `cmdline`, its runtime files in `dir`.
pub fn tcg_vm(name: &str, dir: &Path, cmdline: &str) -> VmSpec {
    VmSpec::new(name, dir, image(), cmdline, Accel::Tcg)
}

/// A user-networking NIC forwarding the given free host ports to guest ports.
pub fn user_nic(forwards: &[(u16, u16)]) -> NetBackend {
    NetBackend::User {
        forwards: forwards
            .iter()
            .map(|&(host, guest)| PortForward { host, guest })
            .collect(),
        tftp: None,
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a hard-to-miss notice that `test` did not run, and why.
pub fn skip(test: &str, why: &str) {
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED {test}: {why}");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
}

/// Runs a command and panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {} failed ({}):\n{stdout}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A network namespace this test created; deleted on drop (which also
/// removes the devices in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(label: &str) -> Netns {
        let name = format!("tandem-{label}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that has entered the namespace (setns affects
    /// only the calling thread), so that its sockets reach the guests there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace file we opened.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}");
            f()
        })
    }

    /// Runs `f` inside the namespace (see [`Netns::spawn`]) and returns its result.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().unwrap()
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Reads the status text through QEMU's hostfwd. hostfwd accepts the
/// connection even while nothing listens in the guest (and then closes it):
/// retry until the answer has content.
pub fn fetch_status(port: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        });
        match attempt {
            Ok(text) if !text.is_empty() => return text,
            other => assert!(
                Instant::now() < deadline,
                "no status text on 127.0.0.1:{port}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
