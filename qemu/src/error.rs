//! The launcher's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// `qemu-system-x86_64` is not on PATH (nor where `TANDEM_QEMU` points).
    QemuMissing { program: String },
    /// A host port we would forward to the guest is already bound by someone else.
    PortInUse { port: u16, source: io::Error },
    /// A disk file the user named cannot be opened for reading and writing.
    DiskUnreadable { path: PathBuf, source: io::Error },
    /// `cargo build` of the image failed (its output went to stderr).
    ImageBuild { status: ExitStatus },
    /// The command line given to the launcher is wrong.
    Usage(String),
    /// Any other I/O failure, with what we were doing.
    Io { context: String, source: io::Error },
    /// Something we waited for did not happen in time.
    Timeout {
        what: String,
        waited: Duration,
        console_tail: String,
    },
    /// QEMU ended while we still expected something from it.
    QemuExited {
        status: ExitStatus,
        waiting_for: String,
        qemu_log: String,
        console_tail: String,
    },
    /// QMP answered with an error or something we could not read.
    Qmp { command: String, message: String },
    /// The serial console did not behave as the image contract says.
    Console(String),
    /// A host command (`ip ...`) failed.
    Command { command: String, stderr: String },
    /// Something went wrong with one node of the pair setup.
    Node { node: String, source: Box<Error> },
    /// The pair setup is not in a state the command can work with.
    Setup(String),
    /// No TCP connection to an NVMe/TCP target (`bench nvme`).
    TargetUnreachable { target: String, source: io::Error },
    /// An NVMe/TCP target would not set up a connection, a controller or a
    /// queue: what it was asked and what it said.
    TargetRefused {
        target: String,
        step: String,
        reason: String,
    },
    /// An NVMe/TCP target failed during a run (connection lost, malformed
    /// PDUs, commands not answered).
    TargetFailed { target: String, reason: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Renders the last lines of a text for an error message.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::QemuMissing { program } => write!(
                f,
                "{program} not found; install it with: \
                 apt-get install -y --no-install-recommends qemu-system-x86"
            ),
            Error::PortInUse { port, source } => write!(
                f,
                "host port 127.0.0.1:{port} is already in use ({source}); \
                 pick other host ports with --port-base N"
            ),
            Error::DiskUnreadable { path, source } => {
                write!(
                    f,
                    "cannot open disk file {} for reading and writing: {source}",
                    path.display()
                )
            }
            Error::ImageBuild { status } => write!(f, "building the image failed ({status})"),
            Error::Usage(message) => write!(f, "{message}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Timeout {
                what,
                waited,
                console_tail,
            } => {
                write!(
                    f,
                    "timed out after {:.1} s waiting for {what}",
                    waited.as_secs_f64()
                )?;
                if !console_tail.is_empty() {
                    write!(f, "\nlast console lines:\n{console_tail}")?;
                }
                Ok(())
            }
            Error::QemuExited {
                status,
                waiting_for,
                qemu_log,
                console_tail,
            } => {
                write!(f, "QEMU exited ({status}) while waiting for {waiting_for}")?;
                if !qemu_log.trim().is_empty() {
                    write!(f, "\nQEMU said:\n{}", qemu_log.trim_end())?;
                }
                if !console_tail.is_empty() {
                    write!(f, "\nlast console lines:\n{console_tail}")?;
                }
                Ok(())
            }
            Error::Qmp { command, message } => write!(f, "QMP {command}: {message}"),
            Error::Console(message) => write!(f, "console: {message}"),
            Error::Command { command, stderr } => {
                write!(f, "`{command}` failed")?;
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                Ok(())
            }
            Error::Node { node, source } => write!(f, "node {node}: {source}"),
            Error::Setup(message) => write!(f, "{message}"),
            Error::TargetUnreachable { target, source } => write!(
                f,
                "cannot reach the NVMe/TCP target {target}: {source} \
                 (is the address right, and does the target listen on that port?)"
            ),
            Error::TargetRefused {
                target,
                step,
                reason,
            } => write!(f, "the NVMe/TCP target {target} refused {step}: {reason}"),
            Error::TargetFailed { target, reason } => {
                write!(
                    f,
                    "the NVMe/TCP target {target} failed during the run: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::PortInUse { source, .. }
            | Error::DiskUnreadable { source, .. }
            | Error::Io { source, .. }
            | Error::TargetUnreachable { source, .. } => Some(source),
            Error::Node { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
