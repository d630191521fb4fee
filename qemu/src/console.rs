//! The image's serial console: following its log, parsing its lines, and
//! talking to its CLI over the console socket.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The console's prompt, printed (without newline) after each command.
pub const PROMPT: &str = "tandem> ";

/// Prefix of the one line per boot that says the image is ready.
pub const READY_PREFIX: &str = "tandem: ready ";

/// Prefix of the line the image prints before exiting on a bad command line.
pub const CONFIG_ERROR_PREFIX: &str = "tandem: config error: ";

/// Prefix of the line the image prints when it panics.
pub const PANIC_PREFIX: &str = "tandem: panic: ";

/// How often a follower looks for new output.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The parsed `tandem: ready <ms> ms net0=<addr/prefix> ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Milliseconds since boot, as the image measured them.
    pub ms: u64,
    /// `(N, "a.b.c.d/p")` for each `netN=` word, in line order.
    pub nics: Vec<(usize, String)>,
}

impl Ready {
    /// Parses a ready line; `None` if `line` is not one.
    pub fn parse(line: &str) -> Option<Ready> {
        let rest = line.trim_end().strip_prefix(READY_PREFIX)?;
        let mut words = rest.split_whitespace();
        let ms = words.next()?.parse().ok()?;
        if words.next()? != "ms" {
            return None;
        }
        // Words other than `netN=...` (such as `no-nics`) carry no address.
        let nics = words
            .filter_map(|word| {
                let (key, addr) = word.split_once('=')?;
                let index = key.strip_prefix("net")?.parse().ok()?;
                Some((index, addr.to_string()))
            })
            .collect();
        Some(Ready { ms, nics })
    }

    /// Address of NIC `index` (`"a.b.c.d/p"`), if the line named it.
    pub fn address(&self, index: usize) -> Option<&str> {
        self.nics
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, a)| a.as_str())
    }
}

/// Follows a growing console log file line by line, from where it last
/// stopped. QEMU writes everything the guest sends to the serial port there,
/// whether or not a client is connected to the console socket.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    pub fn new(path: &Path) -> Self {
        LogFollower {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Complete lines written since the last call (without `\r\n`).
    pub fn new_lines(&mut self) -> io::Result<Vec<String>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(clean_line(&raw));
        }
        Ok(lines)
    }
}

/// Turns raw console bytes into a printable line: drops `\r`, `\n` and
/// control characters other than tab.
pub fn clean_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .filter(|&c| c == '\t' || !c.is_control())
        .collect()
}

/// The last `lines` lines of a console log (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text: Vec<String> = bytes.split(|&b| b == b'\n').map(clean_line).collect();
            crate::error::tail(&text.join("\n"), lines)
        }
        Err(_) => String::new(),
    }
}

/// Connects to a unix socket QEMU creates, retrying until it exists.
pub(crate) fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::io(format!("connecting to {}", path.display()), e));
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Most console output kept unread; older bytes are dropped beyond it.
const MAX_PENDING: usize = 1 << 20;

/// Console bytes received and not yet consumed, filled by the reader thread.
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    closed: bool,
}

type Shared = std::sync::Arc<(std::sync::Mutex<Received>, std::sync::Condvar)>;

/// A client of the console socket that runs CLI commands.
///
/// A thread drains the socket all the time: QEMU's serial port writes one
/// byte per socket write, and a unix socket that is not read fills after a
/// few hundred of them (each costs a whole buffer of the sender's quota).
/// QEMU then stalls the guest's serial port, and with it the guest.
///
/// QEMU accepts one client at a time; output sent while no client was
/// connected is only in the log.
pub struct ConsoleClient {
    stream: UnixStream,
    shared: Shared,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ConsoleClient {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let stream = connect_unix(socket, timeout)?;
        let mut source = stream
            .try_clone()
            .map_err(|e| Error::io("console socket", e))?;
        let shared: Shared = Default::default();
        let sink = shared.clone();
        let reader = std::thread::Builder::new()
            .name("console-reader".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match source.read(&mut buf) {
                        Ok(0) => 0,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    let (lock, ready) = &*sink;
                    let mut received = lock.lock().unwrap_or_else(|p| p.into_inner());
                    if n == 0 {
                        received.closed = true;
                        ready.notify_all();
                        return;
                    }
                    received.bytes.extend_from_slice(&buf[..n]);
                    let excess = received.bytes.len().saturating_sub(MAX_PENDING);
                    received.bytes.drain(..excess);
                    ready.notify_all();
                }
            })
            .map_err(|e| Error::io("starting the console reader", e))?;
        Ok(ConsoleClient {
            stream,
            shared,
            reader: Some(reader),
        })
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io("writing to the console", e))
    }

    /// Reads until `pattern` has arrived; returns everything up to and
    /// including it, keeping what follows for the next read.
    pub fn read_until(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let needle = pattern.as_bytes();
        let (lock, ready) = &*self.shared;
        let mut received = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(pos) = find(&received.bytes, needle) {
                let taken: Vec<u8> = received.bytes.drain(..pos + needle.len()).collect();
                return Ok(String::from_utf8_lossy(&taken).into_owned());
            }
            if received.closed {
                return Err(Error::Console(format!(
                    "the console socket closed while waiting for `{}`",
                    pattern.escape_debug()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!("`{}` on the console", pattern.escape_debug()),
                    waited: timeout,
                    console_tail: String::from_utf8_lossy(&received.bytes).into_owned(),
                });
            }
            received = ready
                .wait_timeout(received, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for console output and takes all of it:
    /// `Some(bytes)` (empty after a quiet `timeout`), `None` once the socket
    /// closed and everything before was taken.
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let (lock, ready) = &*self.shared;
        let mut received = lock.lock().unwrap_or_else(|p| p.into_inner());
        if received.bytes.is_empty() && !received.closed {
            received = ready
                .wait_timeout(received, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if received.bytes.is_empty() && received.closed {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut received.bytes)))
    }

    /// A second handle for writing to the console (e.g. from another thread).
    pub fn writer(&self) -> Result<UnixStream> {
        self.stream
            .try_clone()
            .map_err(|e| Error::io("console socket", e))
    }

    /// Drops everything received so far.
    pub fn discard(&mut self) {
        let (lock, _) = &*self.shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).bytes.clear();
    }

    /// Runs one CLI command and returns its output lines (without the
    /// echoed command, the closing prompt and `\r`s).
    ///
    /// Output that arrived before the echo of the command (an earlier
    /// prompt, log lines) is dropped, so a stale prompt cannot end the
    /// answer early.
    pub fn command(&mut self, command: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        self.send(format!("{command}\r").as_bytes())?;
        self.read_until(command, timeout)?;
        self.read_until("\n", deadline.saturating_duration_since(Instant::now()))?;
        let raw = self.read_until(PROMPT, deadline.saturating_duration_since(Instant::now()))?;
        Ok(command_output(&raw))
    }

    /// Sends a command that ends the running image (`reboot`, `poweroff`):
    /// waits only for its echo, since no prompt follows.
    pub fn command_no_prompt(&mut self, command: &str, timeout: Duration) -> Result<()> {
        self.send(format!("{command}\r").as_bytes())?;
        self.read_until(command, timeout).map(drop)
    }
}

impl Drop for ConsoleClient {
    fn drop(&mut self) {
        // Ends the reader's blocking read.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits the console's answer to a command (what followed the echoed
/// command line, up to and including the prompt) into output lines.
pub fn command_output(raw: &str) -> Vec<String> {
    let body = raw.strip_suffix(PROMPT).unwrap_or(raw);
    let mut lines: Vec<String> = body.split('\n').map(|l| clean_line(l.as_bytes())).collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|l| l.trim().is_empty()) {
        lines.remove(0);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_parse() {
        let r =
            Ready::parse("tandem: ready 183 ms net0=10.0.2.15/24 net1=192.168.77.2/24").unwrap();
        assert_eq!(r.ms, 183);
        assert_eq!(r.address(0), Some("10.0.2.15/24"));
        assert_eq!(r.address(1), Some("192.168.77.2/24"));
        assert_eq!(r.address(2), None);
        assert_eq!(
            Ready::parse("tandem: ready 7 ms").unwrap(),
            Ready {
                ms: 7,
                nics: vec![]
            }
        );
        assert_eq!(Ready::parse("tandem: ready 7 ms\r").unwrap().ms, 7);
        assert_eq!(
            Ready::parse("tandem: ready 9 ms no-nics").unwrap().nics,
            vec![]
        );
        let r = Ready::parse("tandem: ready 9 ms net0=unconfigured").unwrap();
        assert_eq!(r.address(0), Some("unconfigured"));
        for not_ready in [
            "[    0.1] INFO  tandem: ready soon",
            "tandem: ready x ms",
            "tandem: ready 5 s",
            "tandem: config error: log: expected error|warn|info|debug|trace",
        ] {
            assert_eq!(Ready::parse(not_ready), None, "{not_ready}");
        }
    }

    #[test]
    fn follower_yields_complete_lines_once() {
        let dir = crate::TempDir::new("follow-unit").unwrap();
        let path = dir.path().join("console.log");
        let mut f = LogFollower::new(&path);
        assert!(
            f.new_lines().unwrap().is_empty(),
            "a missing log is just empty"
        );
        std::fs::write(&path, b"one\r\ntw").unwrap();
        assert_eq!(f.new_lines().unwrap(), ["one"]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"o\n\x1b[0mthree\ntandem> ").unwrap();
        assert_eq!(f.new_lines().unwrap(), ["two", "[0mthree"]);
        assert!(f.new_lines().unwrap().is_empty());
        assert_eq!(log_tail(&path, 2), "[0mthree\ntandem> ");
    }

    #[test]
    fn command_output_drops_the_prompt_and_blank_edges() {
        let raw = "uptime 1.2 s\r\nmemory used=1 free=2\r\n\r\ntandem> ";
        assert_eq!(
            command_output(raw),
            ["uptime 1.2 s", "memory used=1 free=2"]
        );
        assert_eq!(
            command_output("error: unknown command `bogus`\r\ntandem> "),
            ["error: unknown command `bogus`"]
        );
        assert!(command_output("tandem> ").is_empty());
    }

    /// A scripted console: a stale prompt before the echo must not end the answer.
    #[test]
    fn client_skips_output_before_the_echo() {
        use std::os::unix::net::UnixListener;
        let dir = crate::TempDir::new("console-unit").unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while byte[0] != b'\r' {
                stream.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            assert_eq!(line, b"status\r");
            stream
                .write_all(b"tandem> status\r\nuptime 3 s\r\nnet0 mac=x\r\ntandem> ")
                .unwrap();
        });
        let mut console = ConsoleClient::connect(&path, Duration::from_secs(5)).unwrap();
        let lines = console.command("status", Duration::from_secs(5)).unwrap();
        assert_eq!(lines, ["uptime 3 s", "net0 mac=x"]);
        server.join().unwrap();
    }
}
