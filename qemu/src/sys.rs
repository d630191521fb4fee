//! Every call the launcher makes into libc, each behind a safe function:
//! the rest of the crate has no `unsafe` (the crate denies it everywhere
//! else).
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::Duration;

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM, c_int};

/// The signals that ask the launcher to stop: Ctrl-C, `kill`, a closed
/// terminal.
pub const STOP_SIGNALS: [c_int; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Sends `signal` to process `pid`; false if it could not be sent (no such
/// process, or not ours to signal).
pub fn send_signal(pid: u32, signal: c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The flag [`on_stop_signals`] sets.
static STOP_FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(ptr::null_mut());

extern "C" fn set_stop_flag(_signal: c_int) {
    // Only atomics here: async-signal-safe.
    let flag = STOP_FLAG.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: the pointer came from a `&'static AtomicBool`.
        unsafe { (*flag).store(true, Ordering::SeqCst) };
    }
}

/// From now on, each of [`STOP_SIGNALS`] sets `flag` (and does nothing
/// else): the launcher polls it and stops in its own time.
pub fn on_stop_signals(flag: &'static AtomicBool) {
    STOP_FLAG.store(ptr::from_ref(flag).cast_mut(), Ordering::SeqCst);
    let handler = set_stop_flag as extern "C" fn(c_int) as libc::sighandler_t;
    for signal in STOP_SIGNALS {
        // SAFETY: the handler only touches atomics (async-signal-safe).
        unsafe { libc::signal(signal, handler) };
    }
}

/// How QEMU, started by `command`, is tied to the launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildTie {
    /// Killed when the launcher dies (and not started if it already has).
    DiesWithParent,
    /// In a session of its own: outlives the launcher and its terminal.
    OwnSession,
    /// Neither.
    None,
}

/// Makes the child of `command` start with the default handling of
/// [`STOP_SIGNALS`] (the launcher may catch or ignore them; an ignored
/// signal would stay ignored across exec) and tied to the launcher as `tie`
/// says.
pub fn prepare_child(command: &mut Command, tie: ChildTie) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls (signal, prctl, getppid, setsid,
    // _exit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for signal in STOP_SIGNALS {
                libc::signal(signal, libc::SIG_DFL);
            }
            match tie {
                ChildTie::DiesWithParent => {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                ChildTie::OwnSession => {
                    libc::setsid();
                }
                ChildTie::None => {}
            }
            Ok(())
        });
    }
}

/// Clock ticks per second of the process times in `/proc` (100 where the
/// system does not say).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Waits until `fd` is readable (true) — or writable too when
/// `want_write` — or `timeout` passes (false).
pub fn poll(fd: c_int, want_write: bool, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, ptr::null()) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0
}

/// The terminal on standard input in raw mode until dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    pub fn enter() -> std::io::Result<RawTerminal> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: valid pointers to termios values.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw);
        }
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the mode read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FLAG: AtomicBool = AtomicBool::new(false);

    #[test]
    fn a_stop_signal_sets_the_flag_and_nothing_else() {
        on_stop_signals(&FLAG);
        assert!(!FLAG.load(Ordering::SeqCst));
        assert!(
            send_signal(std::process::id(), SIGHUP),
            "signalling ourselves"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !FLAG.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP did not set the flag"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn signals_to_no_process_are_not_sent() {
        assert!(!send_signal(u32::MAX, 0));
        assert!(
            send_signal(std::process::id(), 0),
            "signal 0 checks that we exist"
        );
    }

    #[test]
    fn a_pipe_with_data_is_readable_and_an_empty_one_times_out() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        use std::io::Write;
        use std::os::fd::AsRawFd;
        assert!(!poll(reader.as_raw_fd(), false, Duration::from_millis(10)));
        writer.write_all(b"x").unwrap();
        assert!(poll(reader.as_raw_fd(), false, Duration::from_secs(1)));
        assert!(clock_ticks_per_second() >= 1.0);
    }
}
