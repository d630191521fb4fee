//! The launcher's command line (pure: parsing only).

use std::path::PathBuf;

use crate::accel::AccelChoice;
use crate::disk::parse_size;
use crate::error::{Error, Result};
use crate::vm::{DEFAULT_MEMORY_MIB, GUEST_DISCOVERY_PORT, GUEST_NVME_PORT};

pub const USAGE: &str = "\
usage: cargo tandem <command> [options]

commands:
  image                 build the image; prints its absolute path last
  run [options]         boot one node; its serial console is this terminal
                        (Ctrl-A x quits QEMU, Ctrl-A c toggles QEMU's monitor)
  bench boot [options]  measure boot time, image size, smallest memory and
                        idle CPU under TCG; writes the Boot section of
                        docs/benchmarks.md
  help                  this text

run options:
  --accel kvm|tcg|auto  accelerator (default auto: KVM only where it really
                        runs guests, else TCG)
  --disk FILE           use FILE as the node's disk (kept); default: a fresh
                        sparse disk, removed when QEMU exits
  --disk-size SIZE      size of the fresh disk, e.g. 512M, 4G (default 1G)
  --mem MB              guest memory in MiB (default 64)
  --port-base N         host ports N, N+1, N+2 for NVMe/TCP, discovery and
                        status (default 4420, 8009, 8100)
  --append CMDLINE      the image's kernel command line (key=value words)

bench boot options:
  --runs N              boots to take the median of (default 10)
  --output FILE         markdown file to update (default docs/benchmarks.md)
  --no-write            print the section without writing it

planned: up, console, fault, down";

/// Host ports forwarded to the node's front-end services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPorts {
    pub nvme: u16,
    pub discovery: u16,
    pub status: u16,
}

impl Default for HostPorts {
    fn default() -> Self {
        HostPorts {
            nvme: GUEST_NVME_PORT,
            discovery: GUEST_DISCOVERY_PORT,
            status: crate::cmdline::DEFAULT_STATUS_PORT,
        }
    }
}

impl HostPorts {
    /// `base`, `base + 1`, `base + 2`.
    pub fn from_base(base: u16) -> Result<Self> {
        if base == 0 || base > u16::MAX - 2 {
            return Err(Error::Usage(format!(
                "--port-base: {base} leaves no room for 3 ports (1..=65533)"
            )));
        }
        Ok(HostPorts {
            nvme: base,
            discovery: base + 1,
            status: base + 2,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub accel: AccelChoice,
    pub disk: Option<PathBuf>,
    pub disk_size: u64,
    pub memory_mib: u32,
    pub ports: HostPorts,
    pub append: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            accel: AccelChoice::Auto,
            disk: None,
            disk_size: 1 << 30,
            memory_mib: DEFAULT_MEMORY_MIB,
            ports: HostPorts::default(),
            append: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    pub runs: usize,
    pub output: Option<PathBuf>,
    pub write: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            runs: 10,
            output: None,
            write: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Image,
    Run(RunOptions),
    BenchBoot(BenchOptions),
    Help,
    /// A command a later stage adds (`up`, `console`, `fault`, `down`).
    Planned(String),
}

/// Splits `--key value` and `--key=value` options.
struct Options<'a> {
    args: std::slice::Iter<'a, String>,
}

impl<'a> Options<'a> {
    /// The next option name and its value.
    fn next(&mut self) -> Option<Result<(String, Option<String>)>> {
        let arg = self.args.next()?;
        let Some(name) = arg.strip_prefix("--") else {
            return Some(Err(Error::Usage(format!(
                "unexpected argument `{arg}`\n\n{USAGE}"
            ))));
        };
        Some(Ok(match name.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (name.to_string(), None),
        }))
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .args
                .next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("--{name} needs a value"))),
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Usage(format!("--{name}: expected {what}, got `{text}`")))
}

/// Parses the arguments after `tandem`.
pub fn parse(args: &[String]) -> Result<Command> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let mut options = Options { args: rest.iter() };
    match command.as_str() {
        "image" => {
            if let Some(extra) = rest.first() {
                return Err(Error::Usage(format!(
                    "image takes no arguments, got `{extra}`"
                )));
            }
            Ok(Command::Image)
        }
        "run" => {
            let mut run = RunOptions::default();
            while let Some(option) = options.next() {
                let (name, inline) = option?;
                let value = options.value(&name, inline)?;
                match name.as_str() {
                    "accel" => run.accel = value.parse()?,
                    "disk" => run.disk = Some(PathBuf::from(value)),
                    "disk-size" => run.disk_size = parse_size(&value)?,
                    "mem" => {
                        run.memory_mib = number(&name, &value, "MiB (a whole number)")?;
                        if run.memory_mib == 0 {
                            return Err(Error::Usage("--mem: must be at least 1".into()));
                        }
                    }
                    "port-base" => {
                        run.ports = HostPorts::from_base(number(&name, &value, "a port number")?)?
                    }
                    "append" => run.append = value,
                    _ => {
                        return Err(Error::Usage(format!(
                            "run: unknown option --{name}\n\n{USAGE}"
                        )));
                    }
                }
            }
            Ok(Command::Run(run))
        }
        "bench" => {
            match rest.first().map(String::as_str) {
                Some("boot") => {}
                Some(other) => {
                    return Err(Error::Usage(format!(
                        "bench: unknown benchmark `{other}` (have: boot)"
                    )));
                }
                None => return Err(Error::Usage("bench: which benchmark? (have: boot)".into())),
            }
            let mut options = Options {
                args: rest[1..].iter(),
            };
            let mut bench = BenchOptions::default();
            while let Some(option) = options.next() {
                let (name, inline) = option?;
                match name.as_str() {
                    "no-write" => bench.write = false,
                    "runs" => {
                        let value = options.value(&name, inline)?;
                        bench.runs = number(&name, &value, "a count")?;
                        if bench.runs == 0 {
                            return Err(Error::Usage("--runs: must be at least 1".into()));
                        }
                    }
                    "output" => bench.output = Some(PathBuf::from(options.value(&name, inline)?)),
                    _ => return Err(Error::Usage(format!("bench boot: unknown option --{name}"))),
                }
            }
            Ok(Command::BenchBoot(bench))
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        "up" | "console" | "fault" | "down" => Ok(Command::Planned(command.clone())),
        other => Err(Error::Usage(format!(
            "unknown command `{other}`\n\n{USAGE}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn run_defaults() {
        assert_eq!(
            parse(&args("run")).unwrap(),
            Command::Run(RunOptions::default())
        );
        let d = RunOptions::default();
        assert_eq!(d.accel, AccelChoice::Auto);
        assert_eq!(d.memory_mib, 64);
        assert_eq!(d.disk_size, 1 << 30);
        assert_eq!(
            d.ports,
            HostPorts {
                nvme: 4420,
                discovery: 8009,
                status: 8100
            }
        );
    }

    #[test]
    fn run_options_in_both_spellings() {
        let mut a =
            args("run --accel tcg --disk /tmp/d.img --disk-size=2G --mem 32 --port-base=14420");
        a.push("--append".into());
        a.push("net0=10.0.0.1/24,gw=10.0.0.254 log=debug".into());
        let Command::Run(run) = parse(&a).unwrap() else {
            panic!()
        };
        assert_eq!(run.accel, AccelChoice::Tcg);
        assert_eq!(run.disk, Some(PathBuf::from("/tmp/d.img")));
        assert_eq!(run.disk_size, 2 << 30);
        assert_eq!(run.memory_mib, 32);
        assert_eq!(
            run.ports,
            HostPorts {
                nvme: 14420,
                discovery: 14421,
                status: 14422
            }
        );
        assert_eq!(run.append, "net0=10.0.0.1/24,gw=10.0.0.254 log=debug");
    }

    #[test]
    fn bad_run_options_are_usage_errors() {
        for bad in [
            "run --accel hvf",
            "run --mem",
            "run --mem 0",
            "run --mem lots",
            "run --port-base 65534",
            "run --port-base 0",
            "run --disk-size 1Q",
            "run --frobnicate 1",
            "run stray",
            "image extra",
            "launch",
            "bench",
            "bench cpu",
            "bench boot --runs 0",
        ] {
            match parse(&args(bad)) {
                Err(Error::Usage(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse(&args("image")).unwrap(), Command::Image);
        assert_eq!(parse(&[]).unwrap(), Command::Help);
        assert_eq!(parse(&args("help")).unwrap(), Command::Help);
        assert_eq!(parse(&args("up")).unwrap(), Command::Planned("up".into()));
        assert_eq!(
            parse(&args("bench boot --runs 3 --no-write")).unwrap(),
            Command::BenchBoot(BenchOptions {
                runs: 3,
                output: None,
                write: false
            })
        );
        assert_eq!(
            parse(&args("bench boot --output /tmp/b.md")).unwrap(),
            Command::BenchBoot(BenchOptions {
                runs: 10,
                output: Some("/tmp/b.md".into()),
                write: true
            })
        );
    }
}
