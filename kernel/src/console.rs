//! The serial console: a line editor fed one byte at a time, and the parser
//! that turns a line into a [`Command`]. Nothing here can fail on any input
//! but with a [`CommandError`], whose text is printed as one `error:` line.

use alloc::string::String;
use core::fmt;

use log::LevelFilter;

use crate::config::{AnaSetting, parse_level};

/// Longest line the console keeps; further bytes are dropped (and beeped).
pub const MAX_LINE: usize = 256;

pub const PROMPT: &str = "tandem> ";

pub const HELP: &str = "\
commands:
  help                                  this text
  status                                uptime, memory, NICs, disks
  log <off|error|warn|info|debug|trace> set the console log level
  disk fill <disk> <lba> <count> <seed> write the test pattern (destroys data)
  disk verify <disk> <lba> <count> <seed> check the test pattern
  nvme                                  subsystem, namespaces, hosts, queues
  nvme ana <group> <state>              set an ANA group's state (manual tests)
  promote / demote                      planned switchover (pair data nodes)
  fence / unfence                       stop serving and never become primary / undo
  invalidate                            discard this node's data: full resync from the peer
  verify                                on the primary: compare both nodes' data in the
                                        background; differing regions are resynced
  discard-my-data                       resolve a refused handshake (split brain, unrelated
                                        data) by discarding this node's data
  history                               role changes with reasons and times
  poweroff                              stop the machine
  reboot                                restart the machine";

/// Longest `disk fill`/`disk verify` run, in sectors (64 MiB).
pub const MAX_PATTERN_SECTORS: u64 = 1 << 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Empty,
    Help,
    Status,
    Log(LevelFilter),
    DiskFill(PatternRange),
    DiskVerify(PatternRange),
    Poweroff,
    Reboot,
    Nvme,
    NvmeAna {
        group: u32,
        state: AnaSetting,
    },
    Promote,
    Demote,
    Fence,
    Unfence,
    /// Discard this node's data (`invalidate`, `discard-my-data`).
    Invalidate,
    /// Online verification (`verify`).
    Verify,
    History,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternRange {
    pub disk: usize,
    pub lba: u64,
    pub count: u64,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    Unknown(String),
    BadArgument {
        command: &'static str,
        usage: &'static str,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown(word) => write!(f, "unknown command '{word}' (try 'help')"),
            CommandError::BadArgument { command, usage } => write!(f, "{command}: usage: {usage}"),
        }
    }
}

const LOG_USAGE: &str = "log <off|error|warn|info|debug|trace>";
const DISK_USAGE: &str = "disk fill|verify <disk> <lba> <count 1-131072> <seed>";

fn no_arguments(
    command: Command,
    name: &'static str,
    rest: &mut core::str::SplitAsciiWhitespace<'_>,
) -> Result<Command, CommandError> {
    match rest.next() {
        None => Ok(command),
        Some(_) => Err(CommandError::BadArgument {
            command: name,
            usage: name,
        }),
    }
}

pub fn parse(line: &str) -> Result<Command, CommandError> {
    let mut words = line.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return Ok(Command::Empty);
    };
    match first {
        "help" | "?" => no_arguments(Command::Help, "help", &mut words),
        "status" => no_arguments(Command::Status, "status", &mut words),
        "poweroff" => no_arguments(Command::Poweroff, "poweroff", &mut words),
        "reboot" => no_arguments(Command::Reboot, "reboot", &mut words),
        "promote" => no_arguments(Command::Promote, "promote", &mut words),
        "demote" => no_arguments(Command::Demote, "demote", &mut words),
        "fence" => no_arguments(Command::Fence, "fence", &mut words),
        "unfence" => no_arguments(Command::Unfence, "unfence", &mut words),
        "history" => no_arguments(Command::History, "history", &mut words),
        "invalidate" => no_arguments(Command::Invalidate, "invalidate", &mut words),
        "verify" => no_arguments(Command::Verify, "verify", &mut words),
        "discard-my-data" => no_arguments(Command::Invalidate, "discard-my-data", &mut words),
        "log" => {
            let bad = CommandError::BadArgument {
                command: "log",
                usage: LOG_USAGE,
            };
            let level = words.next().and_then(parse_level).ok_or(bad.clone())?;
            if words.next().is_some() {
                return Err(bad);
            }
            Ok(Command::Log(level))
        }
        "disk" => parse_disk(&mut words),
        "nvme" => parse_nvme(&mut words),
        other => {
            let mut word = String::new();
            // Echo at most a screenful of the unknown word, printable only.
            word.extend(
                other
                    .chars()
                    .take(32)
                    .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
            );
            Err(CommandError::Unknown(word))
        }
    }
}

const NVME_USAGE: &str = "nvme | nvme ana <group> <optimized|non-optimized|inaccessible>";

fn parse_nvme(words: &mut core::str::SplitAsciiWhitespace<'_>) -> Result<Command, CommandError> {
    let bad = || CommandError::BadArgument {
        command: "nvme",
        usage: NVME_USAGE,
    };
    match words.next() {
        None => Ok(Command::Nvme),
        Some("ana") => {
            let group = words
                .next()
                .and_then(|w| w.parse::<u32>().ok())
                .filter(|g| *g >= 1)
                .ok_or_else(bad)?;
            let state = words.next().and_then(AnaSetting::parse).ok_or_else(bad)?;
            if words.next().is_some() {
                return Err(bad());
            }
            Ok(Command::NvmeAna { group, state })
        }
        Some(_) => Err(bad()),
    }
}

fn parse_disk(words: &mut core::str::SplitAsciiWhitespace<'_>) -> Result<Command, CommandError> {
    let bad = || CommandError::BadArgument {
        command: "disk",
        usage: DISK_USAGE,
    };
    let action = words.next().ok_or_else(bad)?;
    let mut number = || {
        words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(bad)
    };
    let disk = number()?;
    let lba = number()?;
    let count = number()?;
    let seed = number()?;
    if words.next().is_some() || count == 0 || count > MAX_PATTERN_SECTORS || disk > 64 {
        return Err(bad());
    }
    let range = PatternRange {
        disk: disk as usize,
        lba,
        count,
        seed,
    };
    match action {
        "fill" => Ok(Command::DiskFill(range)),
        "verify" => Ok(Command::DiskVerify(range)),
        _ => Err(bad()),
    }
}

/// What the terminal should see after a byte, and a completed line if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EditorOutput<'a> {
    pub echo: &'a str,
    pub line: Option<String>,
}

/// A minimal line editor: printable characters, backspace/delete, Ctrl-U,
/// CR or LF ends a line (CR LF counts once).
#[derive(Default)]
pub struct LineEditor {
    line: String,
    last_was_cr: bool,
}

impl LineEditor {
    pub fn feed(&mut self, byte: u8) -> EditorOutput<'static> {
        let after_cr = core::mem::replace(&mut self.last_was_cr, byte == b'\r');
        match byte {
            b'\n' if after_cr => EditorOutput::default(),
            b'\r' | b'\n' => EditorOutput {
                echo: "\r\n",
                line: Some(core::mem::take(&mut self.line)),
            },
            0x08 | 0x7f => {
                if self.line.pop().is_some() {
                    EditorOutput {
                        echo: "\x08 \x08",
                        line: None,
                    }
                } else {
                    EditorOutput::default()
                }
            }
            0x15 => {
                self.line.clear();
                EditorOutput {
                    echo: "\r\n",
                    line: None,
                }
            }
            0x20..=0x7e if self.line.len() < MAX_LINE => {
                self.line.push(byte as char);
                EditorOutput {
                    echo: ECHO[(byte - 0x20) as usize],
                    line: None,
                }
            }
            0x20..=0x7e => EditorOutput {
                echo: "\x07",
                line: None,
            },
            _ => EditorOutput::default(),
        }
    }

    /// The line typed so far (to redraw it after asynchronous output).
    pub fn pending(&self) -> &str {
        &self.line
    }
}

/// One-character strings for echoing printable ASCII without allocating.
const ECHO: [&str; 95] = [
    " ", "!", "\"", "#", "$", "%", "&", "'", "(", ")", "*", "+", ",", "-", ".", "/", "0", "1", "2",
    "3", "4", "5", "6", "7", "8", "9", ":", ";", "<", "=", ">", "?", "@", "A", "B", "C", "D", "E",
    "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W", "X",
    "Y", "Z", "[", "\\", "]", "^", "_", "`", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k",
    "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "{", "|", "}", "~",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("  "), Ok(Command::Empty));
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse(" status "), Ok(Command::Status));
        assert_eq!(parse("log debug"), Ok(Command::Log(LevelFilter::Debug)));
        assert_eq!(parse("poweroff"), Ok(Command::Poweroff));
        assert_eq!(parse("reboot"), Ok(Command::Reboot));
        assert_eq!(parse("nvme"), Ok(Command::Nvme));
        assert_eq!(parse("promote"), Ok(Command::Promote));
        assert_eq!(parse("demote"), Ok(Command::Demote));
        assert_eq!(parse("fence"), Ok(Command::Fence));
        assert_eq!(parse("invalidate"), Ok(Command::Invalidate));
        assert_eq!(parse("verify"), Ok(Command::Verify));
        assert_eq!(parse("discard-my-data"), Ok(Command::Invalidate));
        assert!(parse("invalidate now").is_err());
        assert_eq!(parse("unfence"), Ok(Command::Unfence));
        assert_eq!(parse("history"), Ok(Command::History));
        assert!(parse("promote now").is_err());
        assert_eq!(
            parse("nvme ana 1 inaccessible"),
            Ok(Command::NvmeAna {
                group: 1,
                state: AnaSetting::Inaccessible
            })
        );
        assert!(parse("nvme ana 0 optimized").is_err());
        assert!(parse("nvme ana 1 change").is_err());
        assert!(parse("nvme ana 1").is_err());
        assert!(parse("nvme list").is_err());
        assert_eq!(
            parse("disk fill 0 8 16 42"),
            Ok(Command::DiskFill(PatternRange {
                disk: 0,
                lba: 8,
                count: 16,
                seed: 42
            }))
        );
        assert_eq!(
            parse("disk verify 1 0 1 0"),
            Ok(Command::DiskVerify(PatternRange {
                disk: 1,
                lba: 0,
                count: 1,
                seed: 0
            }))
        );
    }

    #[test]
    fn errors_are_one_line_and_specific() {
        assert_eq!(
            parse("frobnicate now").unwrap_err().to_string(),
            "unknown command 'frobnicate' (try 'help')"
        );
        assert_eq!(
            parse("log loud").unwrap_err().to_string(),
            "log: usage: log <off|error|warn|info|debug|trace>"
        );
        assert!(parse("log").is_err());
        assert!(parse("log info extra").is_err());
        assert!(parse("status now").is_err());
        assert!(parse("disk fill 0 0 0 1").is_err(), "zero count");
        assert!(parse("disk fill 0 0 131073 1").is_err(), "too long");
        assert!(parse("disk wipe 0 0 1 1").is_err());
        assert!(parse("disk fill 0 0 1").is_err());
        assert!(parse("disk fill 0 -1 1 1").is_err());
        let unknown = parse("\u{1b}[A").unwrap_err().to_string();
        assert!(
            !unknown.contains('\u{1b}'),
            "control characters are not echoed back"
        );
        for error in [parse("x").unwrap_err(), parse("disk").unwrap_err()] {
            assert!(!error.to_string().contains('\n'));
        }
    }

    fn feed_all(editor: &mut LineEditor, bytes: &[u8]) -> Vec<String> {
        bytes.iter().filter_map(|b| editor.feed(*b).line).collect()
    }

    #[test]
    fn editor_handles_crlf_backspace_and_overflow() {
        let mut editor = LineEditor::default();
        assert_eq!(
            feed_all(&mut editor, b"statx\x7fus\r\nhelp\n\r"),
            ["status", "help", ""]
        );
        assert_eq!(feed_all(&mut editor, b"abc\x15log\r"), ["log"]);
        let long = [b'a'; MAX_LINE + 50];
        let lines = feed_all(&mut editor, &long);
        assert!(lines.is_empty());
        assert_eq!(editor.pending().len(), MAX_LINE);
        assert_eq!(editor.feed(b'a').echo, "\x07");
        assert_eq!(feed_all(&mut editor, b"\r")[0].len(), MAX_LINE);
        assert_eq!(
            feed_all(&mut editor, &[0x00, 0x1b, 0xff, b'x', b'\r']),
            ["x"]
        );
    }
}
