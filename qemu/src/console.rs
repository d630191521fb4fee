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
        let mut nics = Vec::new();
        for word in words {
            let (key, addr) = word.split_once('=')?;
            let index = key.strip_prefix("net")?.parse().ok()?;
            nics.push((index, addr.to_string()));
        }
        Some(Ready { ms, nics })
    }

    /// Address of NIC `index` (`"a.b.c.d/p"`), if the line named it.
    pub fn address(&self, index: usize) -> Option<&str> {
        self.nics.iter().find(|(i, _)| *i == index).map(|(_, a)| a.as_str())
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
        LogFollower { path: path.to_path_buf(), offset: 0, partial: Vec::new() }
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

/// A client of the console socket that runs CLI commands.
///
/// QEMU accepts one client at a time; output sent while no client was
/// connected is only in the log.
pub struct ConsoleClient {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl ConsoleClient {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let stream = connect_unix(socket, timeout)?;
        Ok(ConsoleClient { stream, pending: Vec::new() })
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).map_err(|e| Error::io("writing to the console", e))
    }

    /// Reads until `pattern` has arrived; returns everything up to and
    /// including it, keeping what follows for the next read.
    pub fn read_until(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let needle = pattern.as_bytes();
        loop {
            if let Some(pos) = find(&self.pending, needle) {
                let taken: Vec<u8> = self.pending.drain(..pos + needle.len()).collect();
                return Ok(String::from_utf8_lossy(&taken).into_owned());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!("`{}` on the console", pattern.escape_debug()),
                    waited: timeout,
                    console_tail: String::from_utf8_lossy(&self.pending).into_owned(),
                });
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .map_err(|e| Error::io("console socket", e))?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(Error::Console("the console socket closed".into())),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading the console", e)),
            }
        }
    }

    /// Runs one CLI command and returns its output lines: the echo of the
    /// command and the closing prompt are removed, as are `\r`s.
    pub fn command(&mut self, command: &str, timeout: Duration) -> Result<Vec<String>> {
        self.send(format!("{command}\r").as_bytes())?;
        let raw = self.read_until(PROMPT, timeout)?;
        Ok(command_output(&raw, command))
    }

    /// Sends an empty line and waits for the prompt: the console is then in
    /// a known state (anything older is dropped).
    pub fn sync(&mut self, timeout: Duration) -> Result<()> {
        self.pending.clear();
        self.send(b"\r")?;
        self.read_until(PROMPT, timeout).map(drop)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits what the console sent in answer to `command` (up to and including
/// the prompt) into output lines, without the echoed command line.
pub fn command_output(raw: &str, command: &str) -> Vec<String> {
    let body = raw.strip_suffix(PROMPT).unwrap_or(raw);
    let mut lines: Vec<String> = body.split('\n').map(|l| clean_line(l.as_bytes())).collect();
    // The echo: the first line that ends with the command (a prompt printed
    // before the echo may precede it on the same line).
    if let Some(pos) = lines.iter().take(2).position(|l| l.trim_end().ends_with(command.trim())) {
        lines.drain(..=pos);
    }
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
        let r = Ready::parse("tandem: ready 183 ms net0=10.0.2.15/24 net1=192.168.77.2/24").unwrap();
        assert_eq!(r.ms, 183);
        assert_eq!(r.address(0), Some("10.0.2.15/24"));
        assert_eq!(r.address(1), Some("192.168.77.2/24"));
        assert_eq!(r.address(2), None);
        assert_eq!(Ready::parse("tandem: ready 7 ms").unwrap(), Ready { ms: 7, nics: vec![] });
        assert_eq!(Ready::parse("tandem: ready 7 ms\r").unwrap().ms, 7);
        for not_ready in [
            "[    0.1] INFO  tandem: ready soon",
            "tandem: ready x ms",
            "tandem: ready 5 s",
            "tandem: ready 5 ms eth0=1.2.3.4/8",
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
        assert!(f.new_lines().unwrap().is_empty(), "a missing log is just empty");
        std::fs::write(&path, b"one\r\ntw").unwrap();
        assert_eq!(f.new_lines().unwrap(), ["one"]);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"o\n\x1b[0mthree\ntandem> ").unwrap();
        assert_eq!(f.new_lines().unwrap(), ["two", "[0mthree"]);
        assert!(f.new_lines().unwrap().is_empty());
        assert_eq!(log_tail(&path, 2), "[0mthree\ntandem> ");
    }

    #[test]
    fn command_output_drops_echo_and_prompt() {
        let raw = "status\r\nuptime 1.2 s\r\nmemory used=1 free=2\r\n\r\ntandem> ";
        assert_eq!(command_output(raw, "status"), ["uptime 1.2 s", "memory used=1 free=2"]);
        let raw = "tandem> bogus\r\nerror: unknown command `bogus`\r\ntandem> ";
        assert_eq!(command_output(raw, "bogus"), ["error: unknown command `bogus`"]);
        // No echo at all.
        assert_eq!(command_output("error: x\r\ntandem> ", "log loud"), ["error: x"]);
    }
}
