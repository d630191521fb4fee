//! Configuration from the kernel command line: `key=value` words.
//!
//! Every key is documented in the README. An unknown key or a bad value is a
//! [`ConfigError`] naming the key and the expected form; the image prints it
//! and stops rather than run with a configuration the operator did not mean.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use log::LevelFilter;
use tandem_net::NicAddressing;
use tandem_net::smoltcp::wire::{Ipv4Address, Ipv4Cidr};

/// NICs that can be configured (`net0` … `net7`).
pub const MAX_NICS: usize = 8;
pub const DEFAULT_STATUS_PORT: u16 = 8100;

const NIC_FORM: &str = "dhcp or A.B.C.D/N[,gw=A.B.C.D]";
const LOG_FORM: &str = "one of off, error, warn, info, debug, trace";
const PORT_FORM: &str = "a TCP port 0-65535 (0 disables)";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Addressing per NIC in PCI order; absent entries mean DHCP.
    nics: [Option<NicAddressing>; MAX_NICS],
    pub log_level: LevelFilter,
    /// TCP port that serves the `status` text; 0 disables it.
    pub status_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self { nics: [None; MAX_NICS], log_level: LevelFilter::Info, status_port: DEFAULT_STATUS_PORT }
    }
}

impl Config {
    /// Addressing of NIC `index` (DHCP unless configured).
    pub fn nic(&self, index: usize) -> NicAddressing {
        self.nics.get(index).copied().flatten().unwrap_or(NicAddressing::Dhcp)
    }

    /// Indexes of NICs named on the command line.
    pub fn configured_nics(&self) -> impl Iterator<Item = usize> + '_ {
        self.nics.iter().enumerate().filter(|(_, nic)| nic.is_some()).map(|(index, _)| index)
    }

    /// Parses a whole command line. Words are separated by spaces.
    pub fn parse(cmdline: &str) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                return Err(ConfigError::new(word, "key=value", word));
            };
            config.apply(key, value)?;
        }
        Ok(config)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some(index) = key.strip_prefix("net") {
            let index: usize = index
                .parse()
                .ok()
                .filter(|index| *index < MAX_NICS)
                .ok_or_else(|| ConfigError::unknown_key(key))?;
            let addressing = parse_nic(value).ok_or_else(|| ConfigError::new(key, NIC_FORM, value))?;
            self.nics[index] = Some(addressing);
            return Ok(());
        }
        match key {
            "log" => {
                self.log_level = parse_level(value).ok_or_else(|| ConfigError::new(key, LOG_FORM, value))?;
            }
            "status_port" => {
                self.status_port = value.parse().map_err(|_| ConfigError::new(key, PORT_FORM, value))?;
            }
            _ => return Err(ConfigError::unknown_key(key)),
        }
        Ok(())
    }
}

/// Parses a log level name as the `log=` key and the `log` command take it.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    Some(match value {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

fn parse_ipv4(text: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        // Reject signs, empty parts and leading zeros ("010" is ambiguous).
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if part.len() > 1 && part.starts_with('0') {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Address::from_octets(octets))
}

fn parse_nic(value: &str) -> Option<NicAddressing> {
    if value == "dhcp" {
        return Some(NicAddressing::Dhcp);
    }
    let (cidr, gateway) = match value.split_once(',') {
        None => (value, None),
        Some((cidr, option)) => (cidr, Some(parse_ipv4(option.strip_prefix("gw=")?)?)),
    };
    let (address, prefix) = cidr.split_once('/')?;
    let address = parse_ipv4(address)?;
    if !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.is_empty() || prefix.len() > 2 {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    if prefix == 0 || prefix > 32 || address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return None;
    }
    let cidr = Ipv4Cidr::new(address, prefix);
    if let Some(gateway) = gateway {
        if !cidr.contains_addr(&gateway) || gateway == address {
            return None;
        }
    }
    Some(NicAddressing::Static { address: cidr, gateway })
}

/// A command-line key the image cannot use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    /// What the key accepts; `None` for a key the image does not know.
    pub expected: Option<&'static str>,
    pub got: String,
}

impl ConfigError {
    fn new(key: &str, expected: &'static str, got: &str) -> Self {
        Self { key: key.to_string(), expected: Some(expected), got: got.to_string() }
    }

    fn unknown_key(key: &str) -> Self {
        Self { key: key.to_string(), expected: None, got: String::new() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expected {
            Some(expected) => write!(f, "{}: expected {}, got \"{}\"", self.key, expected, self.got),
            None => write!(f, "{}: unknown key (known keys: net0..net{}, log, status_port)", self.key, MAX_NICS - 1),
        }
    }
}

/// The words of a command line, for the ready and status lines.
pub fn describe(config: &Config) -> Vec<String> {
    config.configured_nics().map(|index| alloc::format!("net{index}={}", config.nic(index))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(a: [u8; 4], prefix: u8) -> Ipv4Cidr {
        Ipv4Cidr::new(Ipv4Address::from_octets(a), prefix)
    }

    #[test]
    fn empty_command_line_means_dhcp_everywhere() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.nic(0), NicAddressing::Dhcp);
        assert_eq!(config.nic(7), NicAddressing::Dhcp);
        assert_eq!(config.status_port, DEFAULT_STATUS_PORT);
        assert_eq!(config.log_level, LevelFilter::Info);
    }

    #[test]
    fn static_addresses_with_and_without_gateway() {
        let config = Config::parse("net0=10.0.0.1/24,gw=10.0.0.254  net1=192.168.77.2/30 net2=dhcp").unwrap();
        assert_eq!(
            config.nic(0),
            NicAddressing::Static {
                address: cidr([10, 0, 0, 1], 24),
                gateway: Some(Ipv4Address::from_octets([10, 0, 0, 254]))
            }
        );
        assert_eq!(config.nic(1), NicAddressing::Static { address: cidr([192, 168, 77, 2], 30), gateway: None });
        assert_eq!(config.nic(2), NicAddressing::Dhcp);
        assert_eq!(config.configured_nics().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn bad_nic_values_name_the_key_and_the_form() {
        for bad in [
            "net0=10.0.0.1",
            "net0=10.0.0.1/33",
            "net0=10.0.0.1/0",
            "net0=10.0.0.256/24",
            "net0=10.0.0/24",
            "net0=10.0.0.1.1/24",
            "net0=010.0.0.1/24",
            "net0=+1.0.0.1/24",
            "net0=10.0.0.1/24,gw=10.0.1.1",
            "net0=10.0.0.1/24,gw=10.0.0.1",
            "net0=10.0.0.1/24,via=10.0.0.2",
            "net0=0.0.0.0/8",
            "net0=224.0.0.1/4",
            "net0=DHCP",
            "net0=",
        ] {
            let error = Config::parse(bad).unwrap_err();
            assert_eq!(error.key, "net0", "{bad}");
            let line = error.to_string();
            assert!(line.starts_with("net0: expected dhcp or A.B.C.D/N[,gw=A.B.C.D], got \""), "{line}");
        }
    }

    #[test]
    fn unknown_keys_and_bare_words_are_rejected() {
        assert_eq!(Config::parse("net8=dhcp").unwrap_err().expected, None);
        assert_eq!(Config::parse("netx=dhcp").unwrap_err().expected, None);
        let error = Config::parse("colour=blue").unwrap_err();
        assert_eq!(error.to_string(), "colour: unknown key (known keys: net0..net7, log, status_port)");
        let error = Config::parse("quiet").unwrap_err();
        assert_eq!(error.to_string(), "quiet: expected key=value, got \"quiet\"");
    }

    #[test]
    fn log_and_status_port() {
        let config = Config::parse("log=debug status_port=0").unwrap();
        assert_eq!(config.log_level, LevelFilter::Debug);
        assert_eq!(config.status_port, 0);
        assert_eq!(Config::parse("log=loud").unwrap_err().key, "log");
        assert_eq!(Config::parse("status_port=65536").unwrap_err().key, "status_port");
        assert_eq!(Config::parse("status_port=-1").unwrap_err().key, "status_port");
    }

    #[test]
    fn display_round_trips_through_parse() {
        let config = Config::parse("net0=10.0.0.1/24,gw=10.0.0.254 net1=dhcp").unwrap();
        let words = describe(&config).join(" ");
        assert_eq!(words, "net0=10.0.0.1/24,gw=10.0.0.254 net1=dhcp");
        assert_eq!(Config::parse(&words).unwrap(), config);
    }
}
