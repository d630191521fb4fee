//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// An I/O operation on the host failed.
    Io { context: String, source: io::Error },
    /// `tests/linux/build-guest.sh` failed; its last lines of output.
    BuildFailed { script: PathBuf, tail: String },
    /// A host command (`ip netns …`) failed.
    Command { command: String, stderr: String },
    /// A network backend would send traffic off this machine.
    NotLoopback { address: String },
    /// The configuration cannot be turned into a guest.
    InvalidConfig(String),
    /// The guest ran past its time limit and QEMU was killed.
    GuestTimedOut {
        guest: String,
        after: Duration,
        console_tail: String,
    },
    /// The guest stopped before it reached the awaited mark.
    GuestEnded {
        guest: String,
        waiting_for: String,
        output_tail: String,
        console_tail: String,
    },
    /// The guest did not reach a mark in time.
    MarkTimedOut {
        guest: String,
        mark: String,
        after: Duration,
        console_tail: String,
    },
    /// The guest's script exited non-zero (or never reported a status).
    ScriptFailed {
        guest: String,
        status: Option<i32>,
        output_tail: String,
        console_tail: String,
    },
    /// A fio result file is missing or malformed.
    Fio { job: String, reason: String },
    /// The tandem image (built and run by `tandem-qemu`) failed: building,
    /// booting, its console, or it stopped.
    Tandem(String),
    /// The native load generator or a chart of the side-by-side benchmark
    /// failed.
    Bench(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::BuildFailed { script, tail } => {
                write!(
                    f,
                    "building the Linux guest with {} failed:\n{tail}",
                    script.display()
                )
            }
            Error::Command { command, stderr } => write!(f, "`{command}` failed: {stderr}"),
            Error::NotLoopback { address } => write!(
                f,
                "network backend address {address} is not on loopback: guests may only talk over 127.0.0.0/8 or namespaces this harness creates"
            ),
            Error::InvalidConfig(why) => write!(f, "invalid guest configuration: {why}"),
            Error::GuestTimedOut {
                guest,
                after,
                console_tail,
            } => write!(
                f,
                "guest {guest} still running after {after:?}; QEMU killed. Console tail:\n{console_tail}"
            ),
            Error::GuestEnded {
                guest,
                waiting_for,
                output_tail,
                console_tail,
            } => write!(
                f,
                "guest {guest} stopped before mark '{waiting_for}'. Script output tail:\n{output_tail}\nConsole tail:\n{console_tail}"
            ),
            Error::MarkTimedOut {
                guest,
                mark,
                after,
                console_tail,
            } => write!(
                f,
                "guest {guest} did not reach mark '{mark}' within {after:?}. Console tail:\n{console_tail}"
            ),
            Error::ScriptFailed {
                guest,
                status,
                output_tail,
                console_tail,
            } => {
                match status {
                    Some(s) => write!(f, "script in guest {guest} exited with status {s}.")?,
                    None => write!(f, "guest {guest} ended without reporting a script status.")?,
                }
                write!(
                    f,
                    " Script output tail:\n{output_tail}\nConsole tail:\n{console_tail}"
                )
            }
            Error::Fio { job, reason } => write!(f, "fio job {job}: {reason}"),
            Error::Tandem(why) => write!(f, "tandem image: {why}"),
            Error::Bench(why) => write!(f, "benchmark: {why}"),
        }
    }
}

impl From<tandem_qemu::Error> for Error {
    fn from(e: tandem_qemu::Error) -> Self {
        Error::Tandem(e.to_string())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
