//! A small QMP client (QEMU's JSON machine protocol over a unix socket).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// A QMP connection in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    /// Asynchronous events received while waiting for replies, oldest first.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until QEMU has created the socket), reads the
    /// greeting and negotiates capabilities. `timeout` bounds each command.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = crate::console::connect_unix(socket, timeout)?;
        let writer = stream.try_clone().map_err(|e| Error::io("QMP socket", e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            timeout,
            events: Vec::new(),
        };
        let greeting = qmp.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Qmp {
                command: "greeting".into(),
                message: format!("unexpected {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self, command: &str) -> Result<Value> {
        let deadline = Instant::now() + self.timeout;
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Qmp {
                    command: command.into(),
                    message: "no answer in time".into(),
                });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io("QMP socket", e))?;
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    return Err(Error::Qmp {
                        command: command.into(),
                        message: "QEMU closed the socket".into(),
                    });
                }
                Ok(_) if line.ends_with('\n') => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("QMP {command}"), e)),
            }
        }
        serde_json::from_str(&line).map_err(|e| Error::Qmp {
            command: command.into(),
            message: format!("bad JSON ({e}): {line}"),
        })
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("sending QMP {command}"), e))?;
        loop {
            let message = self.read_message(command)?;
            match parse_reply(message) {
                Reply::Event(event) => self.events.push(event),
                Reply::Return(value) => return Ok(value),
                Reply::Error(message) => {
                    return Err(Error::Qmp {
                        command: command.into(),
                        message,
                    });
                }
            }
        }
    }

    /// Pauses the VM's CPUs (`stop`).
    pub fn stop(&mut self) -> Result<()> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the VM's CPUs (`cont`).
    pub fn cont(&mut self) -> Result<()> {
        self.execute("cont", None).map(drop)
    }

    /// Sets a NIC's link up or down; `name` is the netdev (`n0`) or device (`nic0`) id.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<()> {
        self.execute("set_link", Some(json!({ "name": name, "up": up })))
            .map(drop)
    }

    /// The run state (`running`, `paused`, ...).
    pub fn status(&mut self) -> Result<String> {
        let value = self.execute("query-status", None)?;
        value
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Qmp {
                command: "query-status".into(),
                message: format!("unexpected {value}"),
            })
    }

    /// Hard reset, like pressing the reset button.
    pub fn system_reset(&mut self) -> Result<()> {
        self.execute("system_reset", None).map(drop)
    }

    /// Ends QEMU at once.
    pub fn quit(&mut self) -> Result<()> {
        self.execute("quit", None).map(drop)
    }
}

enum Reply {
    Return(Value),
    Error(String),
    Event(Value),
}

fn parse_reply(message: Value) -> Reply {
    if message.get("event").is_some() {
        return Reply::Event(message);
    }
    if let Some(value) = message.get("return") {
        return Reply::Return(value.clone());
    }
    match message.get("error") {
        Some(error) => {
            let class = error
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("Error");
            let desc = error.get("desc").and_then(Value::as_str).unwrap_or("");
            Reply::Error(format!("{class}: {desc}"))
        }
        None => Reply::Error(format!("unexpected {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn replies_are_classified() {
        assert!(matches!(
            parse_reply(json!({"return": {}})),
            Reply::Return(_)
        ));
        assert!(matches!(
            parse_reply(json!({"event": "STOP", "timestamp": {}})),
            Reply::Event(_)
        ));
        match parse_reply(json!({"error": {"class": "GenericError", "desc": "no such device"}})) {
            Reply::Error(m) => assert_eq!(m, "GenericError: no such device"),
            _ => panic!(),
        }
    }

    /// A scripted QMP server: checks the client's requests and answers them.
    #[test]
    fn client_negotiates_skips_events_and_reports_errors() {
        let dir = crate::TempDir::new("qmp-unit").unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            out.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut expect = |want: Value, answer: &str| {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), want);
                out.write_all(answer.as_bytes()).unwrap();
            };
            expect(
                json!({"execute": "qmp_capabilities"}),
                "{\"return\": {}}\r\n",
            );
            expect(
                json!({"execute": "set_link", "arguments": {"name": "n1", "up": false}}),
                "{\"event\": \"NIC_RX_FILTER_CHANGED\"}\r\n{\"return\": {}}\r\n",
            );
            expect(
                json!({"execute": "query-status"}),
                "{\"return\": {\"status\": \"paused\", \"running\": false}}\r\n",
            );
            expect(
                json!({"execute": "set_link", "arguments": {"name": "zz", "up": true}}),
                "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'zz' not found\"}}\r\n",
            );
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        qmp.set_link("n1", false).unwrap();
        assert_eq!(qmp.events.len(), 1);
        assert_eq!(qmp.status().unwrap(), "paused");
        let err = qmp.set_link("zz", true).unwrap_err().to_string();
        assert!(
            err.contains("DeviceNotFound: Device 'zz' not found"),
            "{err}"
        );
        server.join().unwrap();
    }
}
