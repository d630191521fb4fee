//! A running VM: QEMU as a child process with its console log, console
//! socket and QMP socket. Dropping a [`Node`] kills its QEMU.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::console::{
    CONFIG_ERROR_PREFIX, ConsoleClient, LogFollower, PANIC_PREFIX, POLL_INTERVAL, READY_PREFIX,
    Ready, log_tail,
};
use crate::error::{Error, Result};
use crate::qmp::Qmp;
use crate::sys::{self, ChildTie};
use crate::vm::{ConsoleMode, QEMU_PROGRAM, VmSpec};

/// Longest path a unix socket address holds (sun_path, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Finds the QEMU binary: `$TANDEM_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn find_qemu() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os("TANDEM_QEMU") {
        let path = PathBuf::from(explicit);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::QemuMissing {
                program: path.display().to_string(),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(QEMU_PROGRAM))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| Error::QemuMissing {
            program: QEMU_PROGRAM.into(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails with [`Error::PortInUse`] if `port` cannot be bound on 127.0.0.1.
pub fn check_port_free(port: u16) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|source| Error::PortInUse { port, source })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for tests that run
/// side by side and each need their own forwarded ports).
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| Error::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port", e))
}

/// A QEMU process running one VM.
pub struct Node {
    spec: VmSpec,
    child: Child,
    exit: Option<ExitStatus>,
    follower: LogFollower,
    started: Instant,
    detached: bool,
}

impl Node {
    /// Checks the host side (QEMU present, disks usable, forwarded ports
    /// free), then starts QEMU. Does not wait for the guest.
    pub fn spawn(spec: VmSpec) -> Result<Node> {
        let qemu = find_qemu()?;
        for disk in &spec.disks {
            crate::disk::check_disk(&disk.path)?;
        }
        for port in spec.host_ports() {
            check_port_free(port)?;
        }
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| Error::io(format!("creating {}", spec.dir.display()), e))?;
        for socket in [spec.console_socket(), spec.qmp_socket()] {
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(Error::Usage(format!(
                    "{} is too long for a unix socket; use a shorter runtime directory",
                    socket.display()
                )));
            }
        }
        for stale in [
            spec.console_socket(),
            spec.qmp_socket(),
            spec.console_log(),
            spec.pid_file(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let qemu_log = File::create(spec.qemu_log())
            .map_err(|e| Error::io(format!("creating {}", spec.qemu_log().display()), e))?;

        let mut command = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&qemu);
                c
            }
            None => Command::new(&qemu),
        };
        command.args(spec.qemu_args()).stderr(qemu_log);
        match spec.console {
            ConsoleMode::Socket => {
                command.stdin(Stdio::null()).stdout(Stdio::null());
                // Its own process group: a Ctrl-C meant for the caller's
                // terminal does not reach it (it dies with its parent instead).
                // A background node gets its own session instead (in
                // `pre_exec`): it outlives the launcher and its terminal.
                if spec.die_with_parent {
                    command.process_group(0);
                }
            }
            ConsoleMode::Stdio => {
                command.stdin(Stdio::inherit()).stdout(Stdio::inherit());
            }
        }
        let die_with_parent = spec.die_with_parent;
        let detach_session = !die_with_parent && spec.console == ConsoleMode::Socket;
        let tie = if die_with_parent {
            ChildTie::DiesWithParent
        } else if detach_session {
            ChildTie::OwnSession
        } else {
            ChildTie::None
        };
        sys::prepare_child(&mut command, tie);
        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", qemu.display()), e))?;
        let follower = LogFollower::new(&spec.console_log());
        Ok(Node {
            spec,
            child,
            exit: None,
            follower,
            started,
            detached: false,
        })
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The whole console log so far.
    pub fn console_log(&self) -> String {
        std::fs::read(self.spec.console_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// QEMU's exit status if it has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(|e| Error::io("checking on QEMU", e))?;
        }
        Ok(self.exit)
    }

    fn exited_error(&self, status: ExitStatus, waiting_for: &str) -> Error {
        Error::QemuExited {
            status,
            waiting_for: waiting_for.to_string(),
            qemu_log: std::fs::read_to_string(self.spec.qemu_log()).unwrap_or_default(),
            console_tail: log_tail(&self.spec.console_log(), 20),
        }
    }

    /// Waits for the next console line (after those already consumed by
    /// earlier waits) for which `matches` is true, and returns it.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the exit status before the log: after an exit, one more
            // read sees everything QEMU wrote.
            let exited = self.try_exit()?;
            let lines = self
                .follower
                .new_lines()
                .map_err(|e| Error::io("reading the console log", e))?;
            if let Some(line) = lines.into_iter().find(|l| matches(l)) {
                return Ok(line);
            }
            if let Some(status) = exited {
                return Err(self.exited_error(status, what));
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    console_tail: log_tail(&self.spec.console_log(), 20),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for the next line containing `text`.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line(&format!("`{text}` on the console"), timeout, |l| {
            l.contains(text)
        })
    }

    /// Waits for the next `tandem: ready` line. Fails at once if the image
    /// reports a configuration error or a panic instead.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready> {
        let line = self.wait_for_line("`tandem: ready`", timeout, |l| {
            l.starts_with(READY_PREFIX)
                || l.starts_with(CONFIG_ERROR_PREFIX)
                || l.starts_with(PANIC_PREFIX)
        })?;
        Ready::parse(&line)
            .ok_or_else(|| Error::Console(format!("the image did not get ready: {line}")))
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "QEMU to exit".into(),
                    waited: timeout,
                    console_tail: log_tail(&self.spec.console_log(), 20),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for QEMU to exit, however long that takes (for a VM the user
    /// drives interactively).
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io("waiting for QEMU", e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Connects to the serial console socket.
    pub fn console(&self, timeout: Duration) -> Result<ConsoleClient> {
        ConsoleClient::connect(&self.spec.console_socket(), timeout)
    }

    /// Connects to QMP; `timeout` bounds the connection and each command.
    pub fn qmp(&self, timeout: Duration) -> Result<Qmp> {
        Qmp::connect(&self.spec.qmp_socket(), timeout)
    }

    /// Kills QEMU (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Leaves QEMU running after this `Node` is dropped; returns its pid.
    /// (Meant for background nodes started with `die_with_parent` off.)
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.detached {
            self.kill();
        }
    }
}

/// Boots `image` with no devices under `accel` and waits for ready: the
/// proof that an accelerator really runs this image.
pub fn probe_boot(image: &Path, accel: Accel, timeout: Duration) -> Result<()> {
    let dir = crate::TempDir::new("probe")?;
    let mut spec = VmSpec::new("probe", dir.path(), image, "status_port=0", accel);
    spec.no_reboot = true;
    let mut node = Node::spawn(spec)?;
    node.wait_ready(timeout).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = check_port_free(port).unwrap_err();
        assert!(matches!(err, Error::PortInUse { port: p, .. } if p == port));
        assert!(
            err.to_string()
                .contains(&format!("127.0.0.1:{port} is already in use"))
        );
        drop(listener);
        check_port_free(port).unwrap();
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port().unwrap();
        check_port_free(port).unwrap();
    }

    #[test]
    fn missing_qemu_says_how_to_install_it() {
        let message = Error::QemuMissing {
            program: QEMU_PROGRAM.into(),
        }
        .to_string();
        assert!(
            message.contains("apt-get install -y --no-install-recommends qemu-system-x86"),
            "{message}"
        );
    }
}
