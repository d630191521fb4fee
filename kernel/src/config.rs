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
    /// `status_nics=`: the NICs that serve the status port (bit N: netN);
    /// `None`: the role's default ([`Config::serves_status_on`]).
    pub status_nics: Option<u8>,
    pub nvme: NvmeSettings,
    pub ha: HaSettings,
}

/// What this machine is in an HA pair (`role=`, `node=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaRole {
    /// No pair: a single NVMe/TCP target.
    Standalone,
    /// Data node `a` or `b` of a pair.
    Data(PairNode),
    /// The witness: no disk, no NVMe; breaks ties.
    Witness,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairNode {
    A,
    B,
}

/// The HA pair's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaSettings {
    pub role: HaRole,
    /// `peer_repl=`: the peer's address on the replication link (net1).
    pub peer_replication: Option<[u8; 4]>,
    /// `witness=`: the witness's front-end address; `witness_repl=` its
    /// address on the replication link, if it has one.
    pub witness: Option<[u8; 4]>,
    pub witness_replication: Option<[u8; 4]>,
    /// Front-end addresses of the data nodes, for the witness
    /// (`node_a=`, `node_b=`), and on the replication link (`node_a_repl=`, `node_b_repl=`).
    pub node_addresses: [Option<[u8; 4]>; 2],
    pub node_replication_addresses: [Option<[u8; 4]>; 2],
    /// `pair_id=`: stored in the disk metadata; default derived from the NQN.
    pub pair_id: Option<u64>,
    /// `hb_interval=` and `hb_timeout=` (milliseconds), `lease=` (milliseconds).
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    pub lease_ms: u64,
    /// `resync_rate=`: MiB/s.
    pub resync_mib_per_second: u64,
    /// `ha_port=`: UDP port for control datagrams; the replication stream
    /// uses TCP `ha_port - 1`.
    pub control_port: u16,
    /// `pair_key=`: the pair's shared secret (its `Debug` never shows it).
    pub pair_key: Option<tandem_ha::auth::PairKey>,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            role: HaRole::Standalone,
            peer_replication: None,
            witness: None,
            witness_replication: None,
            node_addresses: [None; 2],
            node_replication_addresses: [None; 2],
            pair_id: None,
            heartbeat_interval_ms: 50,
            failure_timeout_ms: 500,
            lease_ms: 400,
            resync_mib_per_second: 100,
            control_port: 7790,
            pair_key: None,
        }
    }
}

/// The NVMe/TCP target's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeSettings {
    /// `nqn=`: the subsystem NQN both nodes of a pair report.
    pub subsystem_nqn: String,
    /// `serial=` (up to 20 characters) and `model=` (up to 40).
    pub serial: String,
    pub model: String,
    /// `nvme_port=`: NVMe/TCP I/O subsystem port.
    pub port: u16,
    /// `discovery_port=`: discovery subsystem port; 0 disables it.
    pub discovery_port: u16,
    /// `cntlid=MIN-MAX`: controller IDs this node hands out.
    pub cntlid_min: u16,
    pub cntlid_max: u16,
    /// `hosts=NQN[,NQN…]`: allowed host NQNs; empty allows any host.
    pub allowed_hosts: Vec<String>,
    /// `ana=`: initial ANA state of the node's group.
    pub ana_state: AnaSetting,
    /// `ana_group=`: this node's ANA group ID.
    pub ana_group: u32,
    /// `nguid=` (32 hex digits) for namespace 1; namespace N uses it with
    /// N-1 added to its last byte. Default: derived from the NQN, so that
    /// two nodes with the same NQN report the same IDs.
    pub nguid: Option<[u8; 16]>,
    /// `peer=A.B.C.D[:PORT][,…]`: the peer's portals for the discovery log.
    pub peer_portals: Vec<([u8; 4], u16)>,
    /// `lba=512|4096`: the namespaces' LBA size.
    pub lba_bytes: u32,
    /// `io_queues=N`: most I/O queues per controller.
    pub max_io_queues: u16,
    /// `dhchap=<host NQN>,<host secret>[,<controller secret>]` (repeatable):
    /// hosts that must authenticate with DH-HMAC-CHAP.
    pub dhchap_hosts: Vec<tandem_nvme::auth::DhchapHost>,
    /// `dhchap_hash=` / `dhchap_dhgroup=`: the hash function and DH group
    /// the controller picks first when the host offers them.
    pub dhchap_preferences: tandem_nvme::auth::Preferences,
}

impl Default for NvmeSettings {
    fn default() -> Self {
        Self {
            subsystem_nqn: String::from(DEFAULT_NQN),
            serial: String::from("tandem"),
            model: String::from("tandem NVMe/TCP"),
            port: 4420,
            discovery_port: 8009,
            cntlid_min: 1,
            cntlid_max: 0xffef,
            allowed_hosts: Vec::new(),
            ana_state: AnaSetting::Optimized,
            ana_group: 1,
            nguid: None,
            peer_portals: Vec::new(),
            lba_bytes: 512,
            max_io_queues: 8,
            dhchap_hosts: Vec::new(),
            dhchap_preferences: tandem_nvme::auth::Preferences::default(),
        }
    }
}

pub const DEFAULT_NQN: &str = "nqn.2026-11.io.tandem:storage";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnaSetting {
    Optimized,
    NonOptimized,
    Inaccessible,
}

impl AnaSetting {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "optimized" => Self::Optimized,
            "non-optimized" => Self::NonOptimized,
            "inaccessible" => Self::Inaccessible,
            _ => return None,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nics: [None; MAX_NICS],
            log_level: LevelFilter::Info,
            status_port: DEFAULT_STATUS_PORT,
            status_nics: None,
            nvme: NvmeSettings::default(),
            ha: HaSettings::default(),
        }
    }
}

impl Config {
    /// Addressing of NIC `index` (DHCP unless configured).
    pub fn nic(&self, index: usize) -> NicAddressing {
        self.nics
            .get(index)
            .copied()
            .flatten()
            .unwrap_or(NicAddressing::Dhcp)
    }

    /// Indexes of NICs named on the command line.
    pub fn configured_nics(&self) -> impl Iterator<Item = usize> + '_ {
        self.nics
            .iter()
            .enumerate()
            .filter(|(_, nic)| nic.is_some())
            .map(|(index, _)| index)
    }

    /// Whether NIC `index` serves the status port. Default: every NIC on a
    /// stand-alone node, none on a member of a pair (whose segments are
    /// untrusted: the console is its status channel).
    pub fn serves_status_on(&self, index: usize) -> bool {
        if self.status_port == 0 || index >= MAX_NICS {
            return false;
        }
        let nics = self.status_nics.unwrap_or(match self.ha.role {
            HaRole::Standalone => u8::MAX,
            HaRole::Data(_) | HaRole::Witness => 0,
        });
        nics & (1 << index) != 0
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
            let addressing =
                parse_nic(value).ok_or_else(|| ConfigError::new(key, NIC_FORM, value))?;
            self.nics[index] = Some(addressing);
            return Ok(());
        }
        match key {
            "log" => {
                self.log_level =
                    parse_level(value).ok_or_else(|| ConfigError::new(key, LOG_FORM, value))?;
            }
            "status_nics" => {
                self.status_nics = Some(parse_nic_set(value).ok_or_else(|| {
                    ConfigError::new(key, "none, all, or net<N>[,net<N>...] with N 0-7", value)
                })?);
            }
            "pair_key" => {
                // The error says what is wrong with the value, never the value.
                let key =
                    tandem_ha::auth::PairKey::from_hex(value).map_err(|error| ConfigError {
                        key: key.to_string(),
                        expected: Some(
                            "64 hexadecimal digits (make one with `openssl rand -hex 32`)",
                        ),
                        got: alloc::format!(
                            "a value that {}",
                            match error {
                                tandem_ha::auth::KeyError::Length(n) =>
                                    alloc::format!("has {n} characters"),
                                tandem_ha::auth::KeyError::NotHex(at) => alloc::format!(
                                    "has a non-hexadecimal character at position {}",
                                    at + 1
                                ),
                                tandem_ha::auth::KeyError::AllZero => "is all zeroes".to_string(),
                            }
                        ),
                    })?;
                self.ha.pair_key = Some(key);
            }
            "status_port" => {
                self.status_port = value
                    .parse()
                    .map_err(|_| ConfigError::new(key, PORT_FORM, value))?;
            }
            "nqn" => {
                let valid = value.len() < 224
                    && value.starts_with("nqn.")
                    && value != "nqn.2014-08.org.nvmexpress.discovery";
                if !valid {
                    return Err(ConfigError::new(key, NQN_FORM, value));
                }
                self.nvme.subsystem_nqn = value.to_string();
            }
            "serial" => self.nvme.serial = ascii_field(key, value, 20)?,
            "model" => self.nvme.model = ascii_field(key, value, 40)?,
            "nvme_port" => {
                self.nvme.port = value
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ConfigError::new(key, "a TCP port 1-65535", value))?;
            }
            "discovery_port" => {
                self.nvme.discovery_port = value
                    .parse()
                    .map_err(|_| ConfigError::new(key, PORT_FORM, value))?;
            }
            "cntlid" => {
                let range = value.split_once('-').and_then(|(low, high)| {
                    Some((low.parse::<u16>().ok()?, high.parse::<u16>().ok()?))
                });
                match range {
                    Some((low, high)) if low >= 1 && low <= high && high <= 0xffef => {
                        self.nvme.cntlid_min = low;
                        self.nvme.cntlid_max = high;
                    }
                    _ => return Err(ConfigError::new(key, "MIN-MAX within 1-65519", value)),
                }
            }
            "hosts" => {
                let hosts: Vec<String> = value.split(',').map(|h| h.to_string()).collect();
                if hosts
                    .iter()
                    .any(|h| !h.starts_with("nqn.") || h.len() > 223)
                {
                    return Err(ConfigError::new(
                        key,
                        "NQN[,NQN...] (each starting with nqn.)",
                        value,
                    ));
                }
                self.nvme.allowed_hosts = hosts;
            }
            "dhchap" => {
                let host = parse_dhchap(value)?;
                if self
                    .nvme
                    .dhchap_hosts
                    .iter()
                    .any(|h| h.host_nqn == host.host_nqn)
                {
                    return Err(ConfigError::secret(key, "one dhchap= per host NQN"));
                }
                self.nvme.dhchap_hosts.push(host);
            }
            "dhchap_hash" => {
                let hash = match value {
                    "sha256" => tandem_nvme::auth::HashId::Sha256,
                    "sha384" => tandem_nvme::auth::HashId::Sha384,
                    "sha512" => tandem_nvme::auth::HashId::Sha512,
                    _ => {
                        return Err(ConfigError::new(
                            key,
                            "one of sha256, sha384, sha512",
                            value,
                        ));
                    }
                };
                let hashes = &mut self.nvme.dhchap_preferences.hashes;
                hashes.retain(|h| *h != hash);
                hashes.insert(0, hash);
            }
            "dhchap_dhgroup" => {
                let group = tandem_nvme::auth::DhGroup::parse(value).ok_or_else(|| {
                    ConfigError::new(
                        key,
                        "one of null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192",
                        value,
                    )
                })?;
                let groups = &mut self.nvme.dhchap_preferences.groups;
                groups.retain(|g| *g != group);
                groups.insert(0, group);
            }
            "ana" => {
                self.nvme.ana_state = AnaSetting::parse(value).ok_or_else(|| {
                    ConfigError::new(key, "one of optimized, non-optimized, inaccessible", value)
                })?;
            }
            "ana_group" => {
                self.nvme.ana_group = value
                    .parse()
                    .ok()
                    .filter(|g| (1..=128).contains(g))
                    .ok_or_else(|| ConfigError::new(key, "a group ID 1-128", value))?;
            }
            "nguid" => {
                self.nvme.nguid = Some(
                    parse_hex16(value)
                        .ok_or_else(|| ConfigError::new(key, "32 hexadecimal digits", value))?,
                );
            }
            "peer" => {
                let portals: Option<Vec<_>> = value.split(',').map(parse_portal).collect();
                self.nvme.peer_portals = portals.ok_or_else(|| {
                    ConfigError::new(key, "A.B.C.D[:PORT][,A.B.C.D[:PORT]...]", value)
                })?;
            }
            "lba" => {
                self.nvme.lba_bytes = match value {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(ConfigError::new(key, "512 or 4096", value)),
                };
            }
            "io_queues" => {
                self.nvme.max_io_queues = value
                    .parse()
                    .ok()
                    .filter(|q| (1..=64).contains(q))
                    .ok_or_else(|| ConfigError::new(key, "a number 1-64", value))?;
            }
            "role" => match value {
                "witness" => self.ha.role = HaRole::Witness,
                "data" => {}
                _ => return Err(ConfigError::new(key, "data or witness", value)),
            },
            "node" => {
                self.ha.role = match value {
                    "a" => HaRole::Data(PairNode::A),
                    "b" => HaRole::Data(PairNode::B),
                    _ => return Err(ConfigError::new(key, "a or b", value)),
                }
            }
            "peer_repl" => self.ha.peer_replication = Some(address_of(key, value)?),
            "witness" => self.ha.witness = Some(address_of(key, value)?),
            "witness_repl" => self.ha.witness_replication = Some(address_of(key, value)?),
            "node_a" => self.ha.node_addresses[0] = Some(address_of(key, value)?),
            "node_b" => self.ha.node_addresses[1] = Some(address_of(key, value)?),
            "node_a_repl" => self.ha.node_replication_addresses[0] = Some(address_of(key, value)?),
            "node_b_repl" => self.ha.node_replication_addresses[1] = Some(address_of(key, value)?),
            "pair_id" => {
                self.ha.pair_id =
                    Some(value.parse().ok().filter(|id| *id != 0).ok_or_else(|| {
                        ConfigError::new(key, "a number 1-18446744073709551615", value)
                    })?);
            }
            "hb_interval" => self.ha.heartbeat_interval_ms = milliseconds(key, value, 5, 10_000)?,
            "hb_timeout" => self.ha.failure_timeout_ms = milliseconds(key, value, 20, 60_000)?,
            "lease" => self.ha.lease_ms = milliseconds(key, value, 10, 60_000)?,
            "resync_rate" => {
                self.ha.resync_mib_per_second = value
                    .parse()
                    .ok()
                    .filter(|r| (1..=10_000).contains(r))
                    .ok_or_else(|| ConfigError::new(key, "MiB/s, 1-10000", value))?;
            }
            "ha_port" => {
                self.ha.control_port = value
                    .parse()
                    .ok()
                    .filter(|p| *p > 1)
                    .ok_or_else(|| ConfigError::new(key, "a UDP port 2-65535", value))?;
            }
            _ => return Err(ConfigError::unknown_key(key)),
        }
        Ok(())
    }

    /// Checks that keys that only make sense together were given together.
    pub fn check_consistency(&self) -> Result<(), ConfigError> {
        let ha = &self.ha;
        match ha.role {
            HaRole::Data(_) => {
                if self.nvme.peer_portals.is_empty() {
                    return Err(ConfigError::new(
                        "peer",
                        "the peer's front-end address (required with node=)",
                        "",
                    ));
                }
                if ha.pair_key.is_none() {
                    return Err(ConfigError::new("pair_key", PAIR_KEY_REQUIRED, ""));
                }
                if ha.lease_ms < 2 * ha.heartbeat_interval_ms
                    || ha.failure_timeout_ms < 2 * ha.heartbeat_interval_ms
                {
                    return Err(ConfigError::new(
                        "lease",
                        "lease and hb_timeout of at least two hb_interval",
                        "",
                    ));
                }
            }
            HaRole::Witness => {
                if ha.node_addresses.iter().any(Option::is_none) {
                    return Err(ConfigError::new(
                        "node_a",
                        "node_a= and node_b= (the data nodes' front-end addresses) with role=witness",
                        "",
                    ));
                }
                if ha.pair_key.is_none() {
                    return Err(ConfigError::new("pair_key", PAIR_KEY_REQUIRED, ""));
                }
            }
            HaRole::Standalone => {}
        }
        Ok(())
    }
}

const PAIR_KEY_REQUIRED: &str = "the pair's key, 64 hexadecimal digits, the same on a, b and the witness (required in a pair; make one with `openssl rand -hex 32`)";

/// `none`, `all`, or `net0,net2`: a bit per NIC.
fn parse_nic_set(value: &str) -> Option<u8> {
    match value {
        "none" => Some(0),
        "all" => Some(u8::MAX),
        _ => value.split(',').try_fold(0u8, |set, name| {
            let index: usize = name.strip_prefix("net")?.parse().ok()?;
            (index < MAX_NICS).then(|| set | 1 << index)
        }),
    }
}

fn address_of(key: &str, value: &str) -> Result<[u8; 4], ConfigError> {
    parse_ipv4(value)
        .map(|a| a.octets())
        .ok_or_else(|| ConfigError::new(key, "an IPv4 address A.B.C.D", value))
}

fn milliseconds(key: &str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    value
        .parse()
        .ok()
        .filter(|ms| (min..=max).contains(ms))
        .ok_or_else(|| {
            ConfigError::new(
                key,
                if min < 10 {
                    "milliseconds, 5-10000"
                } else if max == 60_000 && min == 20 {
                    "milliseconds, 20-60000"
                } else {
                    "milliseconds, 10-60000"
                },
                value,
            )
        })
}

const NQN_FORM: &str = "an NQN starting with nqn. (at most 223 bytes)";

fn ascii_field(key: &str, value: &str, max: usize) -> Result<String, ConfigError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        let expected = if max == 20 {
            "1-20 printable ASCII characters"
        } else {
            "1-40 printable ASCII characters"
        };
        return Err(ConfigError::new(key, expected, value));
    }
    Ok(value.to_string())
}

fn parse_hex16(text: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (index, pair) in digits.chunks_exact(2).enumerate() {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        out[index] = (high * 16 + low) as u8;
    }
    if out == [0; 16] {
        return None;
    }
    Some(out)
}

fn parse_portal(text: &str) -> Option<([u8; 4], u16)> {
    let (address, port) = match text.split_once(':') {
        Some((address, port)) => (address, port.parse().ok().filter(|p| *p != 0)?),
        None => (text, 4420),
    };
    Some((parse_ipv4(address)?.octets(), port))
}

/// A stable 16-byte ID from the NQN and a namespace number (FNV-1a based):
/// both nodes of a pair derive the same NGUID and UUID from the same NQN.
pub fn derived_id(nqn: &str, nsid: u32, salt: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_exact_mut(8).enumerate() {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ (half as u64) ^ ((salt as u64) << 8);
        for byte in nqn.bytes().chain(nsid.to_le_bytes()) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        chunk.copy_from_slice(&hash.to_be_bytes());
    }
    out
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
    if prefix == 0
        || prefix > 32
        || address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
    {
        return None;
    }
    let cidr = Ipv4Cidr::new(address, prefix);
    if let Some(gateway) = gateway {
        if !cidr.contains_addr(&gateway) || gateway == address {
            return None;
        }
    }
    Some(NicAddressing::Static {
        address: cidr,
        gateway,
    })
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
        Self {
            key: key.to_string(),
            expected: Some(expected),
            got: got.to_string(),
        }
    }

    /// An error about a value that holds a secret: the value is not shown.
    fn secret(key: &str, expected: &'static str) -> Self {
        Self {
            key: key.to_string(),
            expected: Some(expected),
            got: String::from("<secret not shown>"),
        }
    }

    fn unknown_key(key: &str) -> Self {
        Self {
            key: key.to_string(),
            expected: None,
            got: String::new(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expected {
            Some(expected) => write!(
                f,
                "{}: expected {}, got \"{}\"",
                self.key, expected, self.got
            ),
            None => write!(f, "{}: unknown key (see the README for the keys)", self.key),
        }
    }
}

/// `dhchap=<host NQN>,<host secret>[,<controller secret>]`; errors never
/// show the secrets.
fn parse_dhchap(value: &str) -> Result<tandem_nvme::auth::DhchapHost, ConfigError> {
    use tandem_nvme::auth::{DhchapHost, DhchapSecret};
    const KEY: &str = "dhchap";
    const FORM: &str = "<host NQN>,<host secret>[,<controller secret>] (secrets as nvme gen-dhchap-key prints them)";
    let mut parts = value.split(',');
    let (Some(nqn), Some(host)) = (parts.next(), parts.next()) else {
        return Err(ConfigError::secret(KEY, FORM));
    };
    let ctrl = parts.next();
    if parts.next().is_some() {
        return Err(ConfigError::secret(KEY, FORM));
    }
    if !nqn.starts_with("nqn.") || nqn.len() > 223 {
        return Err(ConfigError::new(
            KEY,
            "a host NQN (starting with nqn.) first",
            nqn,
        ));
    }
    let secret = |text: &str, which: &'static str| {
        DhchapSecret::parse(text).map_err(|e| {
            ConfigError::secret(
                KEY,
                match (which, e) {
                    ("host", tandem_nvme::auth::SecretError::Crc) => "a host secret whose CRC matches (mistyped?)",
                    ("host", _) => "a host secret DHHC-1:<00..03>:<base64 of a 32, 48 or 64-byte key and its CRC>:",
                    (_, tandem_nvme::auth::SecretError::Crc) => "a controller secret whose CRC matches (mistyped?)",
                    _ => "a controller secret DHHC-1:<00..03>:<base64 of a 32, 48 or 64-byte key and its CRC>:",
                },
            )
        })
    };
    let host_secret = secret(host, "host")?;
    let ctrl_secret = ctrl.map(|c| secret(c, "controller")).transpose()?;
    if ctrl_secret.as_ref() == Some(&host_secret) {
        return Err(ConfigError::secret(
            KEY,
            "a controller secret different from the host secret",
        ));
    }
    Ok(DhchapHost {
        host_nqn: nqn.to_string(),
        host_secret,
        ctrl_secret,
    })
}

/// The words of a command line, for the ready and status lines.
pub fn describe(config: &Config) -> Vec<String> {
    config
        .configured_nics()
        .map(|index| alloc::format!("net{index}={}", config.nic(index)))
        .collect()
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
        let config =
            Config::parse("net0=10.0.0.1/24,gw=10.0.0.254  net1=192.168.77.2/30 net2=dhcp")
                .unwrap();
        assert_eq!(
            config.nic(0),
            NicAddressing::Static {
                address: cidr([10, 0, 0, 1], 24),
                gateway: Some(Ipv4Address::from_octets([10, 0, 0, 254]))
            }
        );
        assert_eq!(
            config.nic(1),
            NicAddressing::Static {
                address: cidr([192, 168, 77, 2], 30),
                gateway: None
            }
        );
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
            assert!(
                line.starts_with("net0: expected dhcp or A.B.C.D/N[,gw=A.B.C.D], got \""),
                "{line}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bare_words_are_rejected() {
        assert_eq!(Config::parse("net8=dhcp").unwrap_err().expected, None);
        assert_eq!(Config::parse("netx=dhcp").unwrap_err().expected, None);
        let error = Config::parse("colour=blue").unwrap_err();
        assert_eq!(
            error.to_string(),
            "colour: unknown key (see the README for the keys)"
        );
        let error = Config::parse("quiet").unwrap_err();
        assert_eq!(
            error.to_string(),
            "quiet: expected key=value, got \"quiet\""
        );
    }

    #[test]
    fn log_and_status_port() {
        let config = Config::parse("log=debug status_port=0").unwrap();
        assert_eq!(config.log_level, LevelFilter::Debug);
        assert_eq!(config.status_port, 0);
        assert_eq!(Config::parse("log=loud").unwrap_err().key, "log");
        assert_eq!(
            Config::parse("status_port=65536").unwrap_err().key,
            "status_port"
        );
        assert_eq!(
            Config::parse("status_port=-1").unwrap_err().key,
            "status_port"
        );
    }

    #[test]
    fn nvme_keys() {
        let config = Config::parse(
            "nqn=nqn.2026-11.io.example:vol serial=ABC123 model=box nvme_port=4421 discovery_port=0 cntlid=100-199 \
             hosts=nqn.a,nqn.b ana=inaccessible ana_group=2 nguid=00112233445566778899aabbccddeeff peer=10.0.0.2,10.0.0.3:4430 lba=4096 io_queues=4",
        )
        .unwrap();
        let nvme = &config.nvme;
        assert_eq!(nvme.subsystem_nqn, "nqn.2026-11.io.example:vol");
        assert_eq!(
            (nvme.serial.as_str(), nvme.model.as_str()),
            ("ABC123", "box")
        );
        assert_eq!((nvme.port, nvme.discovery_port), (4421, 0));
        assert_eq!((nvme.cntlid_min, nvme.cntlid_max), (100, 199));
        assert_eq!(nvme.allowed_hosts, ["nqn.a", "nqn.b"]);
        assert_eq!(
            (nvme.ana_state, nvme.ana_group),
            (AnaSetting::Inaccessible, 2)
        );
        assert_eq!(nvme.nguid.unwrap()[15], 0xff);
        assert_eq!(
            nvme.peer_portals,
            [([10, 0, 0, 2], 4420), ([10, 0, 0, 3], 4430)]
        );
        assert_eq!((nvme.lba_bytes, nvme.max_io_queues), (4096, 4));
    }

    #[test]
    fn bad_nvme_values_are_rejected_with_their_key() {
        for (word, key) in [
            ("nqn=iqn.foo", "nqn"),
            ("nqn=nqn.2014-08.org.nvmexpress.discovery", "nqn"),
            ("serial=012345678901234567890", "serial"),
            ("nvme_port=0", "nvme_port"),
            ("cntlid=10-5", "cntlid"),
            ("cntlid=0-5", "cntlid"),
            ("cntlid=1-65535", "cntlid"),
            ("hosts=bob", "hosts"),
            ("ana=fast", "ana"),
            ("ana_group=0", "ana_group"),
            ("nguid=1234", "nguid"),
            ("nguid=00000000000000000000000000000000", "nguid"),
            ("peer=10.0.0.2:0", "peer"),
            ("peer=host:4420", "peer"),
            ("lba=1024", "lba"),
            ("io_queues=0", "io_queues"),
        ] {
            assert_eq!(Config::parse(word).unwrap_err().key, key, "{word}");
        }
    }

    const HOST_SECRET: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const CTRL_SECRET: &str = "DHHC-1:01:AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8ge/xg:";

    #[test]
    fn dhchap_keys() {
        let config = Config::parse(&alloc::format!(
            "dhchap=nqn.h1,{HOST_SECRET} dhchap=nqn.h2,{HOST_SECRET},{CTRL_SECRET} dhchap_hash=sha512 dhchap_dhgroup=null"
        ))
        .unwrap();
        let nvme = &config.nvme;
        assert_eq!(nvme.dhchap_hosts.len(), 2);
        assert_eq!(nvme.dhchap_hosts[0].host_nqn, "nqn.h1");
        assert!(nvme.dhchap_hosts[0].ctrl_secret.is_none());
        assert!(nvme.dhchap_hosts[1].ctrl_secret.is_some());
        assert_eq!(
            nvme.dhchap_preferences.hashes[0],
            tandem_nvme::auth::HashId::Sha512
        );
        assert_eq!(nvme.dhchap_preferences.hashes.len(), 3);
        assert_eq!(
            nvme.dhchap_preferences.groups[0],
            tandem_nvme::auth::DhGroup::Null
        );
    }

    #[test]
    fn bad_dhchap_values_are_rejected_without_showing_the_secret() {
        let typo = HOST_SECRET.replace("AAEC", "AAED");
        for word in [
            String::from("dhchap=nqn.h1"),
            alloc::format!("dhchap=bob,{HOST_SECRET}"),
            alloc::format!("dhchap=nqn.h1,{typo}"),
            alloc::format!("dhchap=nqn.h1,{HOST_SECRET},{HOST_SECRET}"),
            alloc::format!("dhchap=nqn.h1,{HOST_SECRET},DHHC-1:07:abcd:"),
            alloc::format!("dhchap=nqn.h1,{HOST_SECRET},{CTRL_SECRET},x"),
            alloc::format!("dhchap=nqn.h1,{HOST_SECRET} dhchap=nqn.h1,{CTRL_SECRET}"),
        ] {
            let error = Config::parse(&word).unwrap_err();
            assert_eq!(error.key, "dhchap", "{word}");
            let shown = alloc::format!("{error}");
            assert!(
                !shown.contains("AAEC") && !shown.contains("AQEC") && !shown.contains("AAED"),
                "{shown}"
            );
        }
        assert!(
            alloc::format!(
                "{}",
                Config::parse(&alloc::format!("dhchap=nqn.h1,{typo}")).unwrap_err()
            )
            .contains("CRC")
        );
        assert_eq!(
            Config::parse("dhchap_hash=md5").unwrap_err().key,
            "dhchap_hash"
        );
        assert_eq!(
            Config::parse("dhchap_dhgroup=ffdhe1024").unwrap_err().key,
            "dhchap_dhgroup"
        );
    }

    #[test]
    fn ha_keys() {
        let config = Config::parse(
            &format!("node=b peer=10.77.0.1 peer_repl=10.78.0.1 witness=10.77.0.3 hb_interval=20 hb_timeout=300 lease=200 pair_id=7 resync_rate=50 pair_key={KEY}"),
        )
        .unwrap();
        config.check_consistency().unwrap();
        assert_eq!(config.ha.role, HaRole::Data(PairNode::B));
        assert_eq!(config.ha.peer_replication, Some([10, 78, 0, 1]));
        assert_eq!(config.ha.witness, Some([10, 77, 0, 3]));
        assert_eq!(
            (
                config.ha.heartbeat_interval_ms,
                config.ha.failure_timeout_ms,
                config.ha.lease_ms
            ),
            (20, 300, 200)
        );
        assert_eq!(
            (config.ha.pair_id, config.ha.resync_mib_per_second),
            (Some(7), 50)
        );
        let witness = Config::parse(&format!(
            "role=witness node_a=10.77.0.1 node_b=10.77.0.2 pair_key={KEY}"
        ))
        .unwrap();
        witness.check_consistency().unwrap();
        assert_eq!(witness.ha.role, HaRole::Witness);
        assert_eq!(
            Config::parse("role=witness")
                .unwrap()
                .check_consistency()
                .unwrap_err()
                .key,
            "node_a"
        );
        assert_eq!(
            Config::parse("node=a")
                .unwrap()
                .check_consistency()
                .unwrap_err()
                .key,
            "peer"
        );
        assert_eq!(
            Config::parse(&format!(
                "node=a peer=10.0.0.2 hb_interval=300 pair_key={KEY}"
            ))
            .unwrap()
            .check_consistency()
            .unwrap_err()
            .key,
            "lease"
        );
        for (word, key) in [
            ("node=c", "node"),
            ("role=boss", "role"),
            ("witness=x", "witness"),
            ("hb_interval=1", "hb_interval"),
            ("pair_id=0", "pair_id"),
        ] {
            assert_eq!(Config::parse(word).unwrap_err().key, key, "{word}");
        }
    }

    const KEY: &str = "8f1c0a9e55d2b7346e01f3c2a9d8b7e6f5a4c3b2d1e0f9a8b7c6d5e4f3a2b1c0";

    #[test]
    fn pair_members_need_a_key_which_is_never_printed() {
        let data = Config::parse("node=a peer=10.0.0.2").unwrap();
        let error = data.check_consistency().unwrap_err();
        assert_eq!(error.key, "pair_key");
        assert!(
            error
                .to_string()
                .starts_with("pair_key: expected the pair's key, 64 hexadecimal digits"),
            "{error}"
        );
        let witness = Config::parse("role=witness node_a=10.77.0.1 node_b=10.77.0.2").unwrap();
        assert_eq!(witness.check_consistency().unwrap_err().key, "pair_key");
        Config::parse("").unwrap().check_consistency().unwrap();
        // Bad keys: the line says what is wrong, not what was given.
        for (value, why) in [
            (&KEY[1..], "has 63 characters"),
            (
                &"8f1c0a9e55d2b7346e01f3c2a9d8b7e6f5a4c3b2d1e0f9a8b7c6d5e4f3a2b1cz"[..],
                "non-hexadecimal character at position 64",
            ),
            (&"0".repeat(64)[..], "is all zeroes"),
        ] {
            let error = Config::parse(&format!("pair_key={value}")).unwrap_err();
            let line = error.to_string();
            assert_eq!(error.key, "pair_key");
            assert!(line.contains(why), "{line}");
            assert!(!line.contains(&value[..16]), "the key leaked: {line}");
        }
        let config = Config::parse(&format!("node=a peer=10.0.0.2 pair_key={KEY}")).unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(&KEY[..16]) && !shown.contains("143, 28"),
            "{shown}"
        );
    }

    #[test]
    fn status_nics_default_per_role() {
        let standalone = Config::parse("").unwrap();
        assert!((0..MAX_NICS).all(|nic| standalone.serves_status_on(nic)));
        let member = Config::parse(&format!("node=a peer=10.0.0.2 pair_key={KEY}")).unwrap();
        assert!((0..MAX_NICS).all(|nic| !member.serves_status_on(nic)));
        let witness = Config::parse("role=witness").unwrap();
        assert!(!witness.serves_status_on(0));
        let chosen =
            Config::parse(&format!("node=a pair_key={KEY} status_nics=net2,net0")).unwrap();
        assert_eq!(
            (0..4)
                .map(|nic| chosen.serves_status_on(nic))
                .collect::<Vec<_>>(),
            [true, false, true, false]
        );
        assert!(
            !Config::parse("status_nics=all status_port=0")
                .unwrap()
                .serves_status_on(0)
        );
        assert!(
            !Config::parse("status_nics=none")
                .unwrap()
                .serves_status_on(0)
        );
        assert!(
            Config::parse("role=witness status_nics=all")
                .unwrap()
                .serves_status_on(7)
        );
        for bad in [
            "status_nics=",
            "status_nics=eth0",
            "status_nics=net8",
            "status_nics=net0,",
        ] {
            assert_eq!(Config::parse(bad).unwrap_err().key, "status_nics", "{bad}");
        }
    }

    #[test]
    fn derived_ids_depend_on_nqn_and_namespace_only() {
        let a = derived_id("nqn.x", 1, 0);
        assert_eq!(a, derived_id("nqn.x", 1, 0));
        assert_ne!(a, derived_id("nqn.y", 1, 0));
        assert_ne!(a, derived_id("nqn.x", 2, 0));
        assert_ne!(a, derived_id("nqn.x", 1, 1));
    }

    #[test]
    fn display_round_trips_through_parse() {
        let config = Config::parse("net0=10.0.0.1/24,gw=10.0.0.254 net1=dhcp").unwrap();
        let words = describe(&config).join(" ");
        assert_eq!(words, "net0=10.0.0.1/24,gw=10.0.0.254 net1=dhcp");
        assert_eq!(Config::parse(&words).unwrap(), config);
    }
}
