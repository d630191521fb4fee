//! The HA pair's layout for `cargo tandem up` (pure: no I/O): node names,
//! subnets and addresses, interface names, and each node's kernel command
//! line.
//!
//! Three nodes share two Ethernet segments:
//!
//! | segment | a | b | witness | this machine |
//! |---|---|---|---|---|
//! | front-end (net0), default 10.77.0.0/24 | .1 | .2 | .3 | last address (.254) |
//! | replication (net1), default 10.78.0.0/24 | .1 | .2 | .3 | — |
//!
//! The witness is on both segments, like the data nodes: it hears each of
//! them on two links, so one lost link or switch is not taken for a dead
//! node by the witness either.
//!
//! A layout may add a third segment for the hosts' paths (net2 of a and b,
//! `.1` and `.2`; [`PairLayout::host_path`]): then a host reaches a data
//! node even while that node's front-end is cut off, and each node's
//! discovery log names the peer's portal on both segments.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use crate::cmdline::KernelCmdline;
use crate::error::{Error, Result};

/// A node of the pair setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeName {
    A,
    B,
    Witness,
}

impl NodeName {
    pub const ALL: [NodeName; 3] = [NodeName::A, NodeName::B, NodeName::Witness];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeName::A => "a",
            NodeName::B => "b",
            NodeName::Witness => "witness",
        }
    }

    /// Host number on each segment (a = 1, b = 2, witness = 3); also the
    /// node byte of its MAC addresses.
    pub fn number(self) -> u8 {
        match self {
            NodeName::A => 1,
            NodeName::B => 2,
            NodeName::Witness => 3,
        }
    }

    /// NICs in PCI order: net0 front-end, net1 replication.
    pub fn nic_count(self) -> usize {
        2
    }

    /// Data nodes have a disk; the witness has none.
    pub fn has_disk(self) -> bool {
        self != NodeName::Witness
    }

    /// The other data node.
    pub fn peer(self) -> Option<NodeName> {
        match self {
            NodeName::A => Some(NodeName::B),
            NodeName::B => Some(NodeName::A),
            NodeName::Witness => None,
        }
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "a" => Ok(NodeName::A),
            "b" => Ok(NodeName::B),
            "witness" => Ok(NodeName::Witness),
            other => Err(Error::Usage(format!(
                "unknown node `{other}` (nodes: a, b, witness)"
            ))),
        }
    }
}

/// Parses a NIC argument of `fault`: `net1`, `nic1` or `1`.
pub fn parse_nic(node: NodeName, text: &str) -> Result<usize> {
    let digits = text
        .strip_prefix("net")
        .or_else(|| text.strip_prefix("nic"))
        .unwrap_or(text);
    let index: usize = digits
        .parse()
        .map_err(|_| Error::Usage(format!("NIC `{text}`: expected net0, net1, ...")))?;
    if index >= node.nic_count() {
        let names: Vec<String> = (0..node.nic_count()).map(|i| format!("net{i}")).collect();
        return Err(Error::Usage(format!(
            "node {node} has no {text} (it has {})",
            names.join(", ")
        )));
    }
    Ok(index)
}

/// An IPv4 subnet `A.B.C.D/N` with room for the nodes and this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Subnet> {
        let text = format!("{network}/{prefix}");
        if !(8..=29).contains(&prefix) {
            return Err(Error::Usage(format!(
                "subnet {text}: the prefix must be 8-29 (room for three nodes and this machine)"
            )));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(Error::Usage(format!(
                "subnet {text}: host bits are set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(network) & mask)
            )));
        }
        Ok(Subnet { network, prefix })
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// Host number `n` in this subnet (1 = the first address after the network's).
    pub fn host(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// The last address before the broadcast address.
    pub fn last_host(self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.network) | !self.mask()) - 1)
    }

    pub fn contains(self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(self, other: Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// `address/prefix`, as the image's `netN=` key and `ip addr` take it.
    pub fn cidr(self, address: Ipv4Addr) -> String {
        format!("{address}/{}", self.prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Usage(format!(
                "subnet `{s}`: expected A.B.C.D/N, e.g. 10.77.0.0/24"
            ))
        };
        let (address, prefix) = s.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Subnet::new(address, prefix)
    }
}

/// Default front-end segment (net0 of every node; NVMe/TCP portals).
pub const DEFAULT_FRONT_END: Subnet = Subnet {
    network: Ipv4Addr::new(10, 77, 0, 0),
    prefix: 24,
};
/// Default replication segment (net1 of a and b).
pub const DEFAULT_REPLICATION: Subnet = Subnet {
    network: Ipv4Addr::new(10, 78, 0, 0),
    prefix: 24,
};

/// The subsystem NQN both data nodes report (the image's default NQN).
pub const DEFAULT_PAIR_NQN: &str = "nqn.2026-11.io.tandem:storage";

/// Controller IDs each data node hands out: disjoint, so that a host sees
/// distinct controllers on the two paths of one subsystem.
pub fn cntlid_range(node: NodeName) -> Option<(u16, u16)> {
    match node {
        NodeName::A => Some((1, 0x7fff)),
        NodeName::B => Some((0x8000, 0xffef)),
        NodeName::Witness => None,
    }
}

/// Guest ports the data nodes serve on the front-end.
pub const NVME_PORT: u16 = crate::vm::GUEST_NVME_PORT;
pub const DISCOVERY_PORT: u16 = crate::vm::GUEST_DISCOVERY_PORT;

/// Addresses and identity of a pair setup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairLayout {
    pub front_end: Subnet,
    pub replication: Subnet,
    pub nqn: String,
    /// Pass the HA keys (`node=`, `peer_repl=`, `witness=`,
    /// `witness_repl=`; for the witness `role=`, `node_a=`, `node_b=`,
    /// `node_a_repl=`, `node_b_repl=`). Without them each data node is a
    /// standalone target and the witness an idle image: for images that do
    /// not know the keys.
    pub ha_keys: bool,
    /// A segment of the hosts' own (net2 of the data nodes; the witness is
    /// not on it). `cargo tandem up` has none: its hosts use the front-end.
    pub host_path: Option<Subnet>,
    /// `pair_key=` for all three members (with `ha_keys`); `up` fills it in
    /// from the setup directory's `pair.key`.
    pub pair_key: Option<String>,
}

impl Default for PairLayout {
    fn default() -> Self {
        PairLayout {
            front_end: DEFAULT_FRONT_END,
            replication: DEFAULT_REPLICATION,
            nqn: DEFAULT_PAIR_NQN.into(),
            ha_keys: true,
            host_path: None,
            pair_key: None,
        }
    }
}

impl PairLayout {
    /// Checks that the two segments do not overlap.
    pub fn validate(&self) -> Result<()> {
        if self.front_end.overlaps(self.replication) {
            return Err(Error::Usage(format!(
                "the front-end subnet {} and the replication subnet {} overlap",
                self.front_end, self.replication
            )));
        }
        if let Some(host_path) = self.host_path {
            for (what, other) in [
                ("front-end", self.front_end),
                ("replication", self.replication),
            ] {
                if host_path.overlaps(other) {
                    return Err(Error::Usage(format!(
                        "the host path subnet {host_path} and the {what} subnet {other} overlap"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn front_end_address(&self, node: NodeName) -> Ipv4Addr {
        self.front_end.host(node.number().into())
    }

    pub fn replication_address(&self, node: NodeName) -> Ipv4Addr {
        self.replication.host(node.number().into())
    }

    /// The data node's address on the host path segment, if there is one.
    pub fn host_path_address(&self, node: NodeName) -> Option<Ipv4Addr> {
        let host_path = self.host_path?;
        node.has_disk()
            .then(|| host_path.host(node.number().into()))
    }

    /// This machine's address on the front-end segment.
    pub fn host_address(&self) -> Ipv4Addr {
        self.front_end.last_host()
    }

    /// `pair_key=`, and `status_nics=net0`: the launcher's front-end
    /// segment is its own bridge, reached from this machine (the image's
    /// default for a pair member is no NIC).
    fn set_key(&self, c: &mut KernelCmdline) {
        if let Some(key) = &self.pair_key {
            c.set("pair_key", key.as_str());
        }
        c.set("status_nics", "net0");
    }

    /// The node's kernel command line: addresses, identity, HA keys, then
    /// `extra` (the user's words replace keys of the same name).
    pub fn cmdline(&self, node: NodeName, extra: &str) -> KernelCmdline {
        let mut c = KernelCmdline::new();
        c.set("net0", self.front_end.cidr(self.front_end_address(node)));
        c.set(
            "net1",
            self.replication.cidr(self.replication_address(node)),
        );
        let front = |n: NodeName| self.front_end_address(n).to_string();
        let repl = |n: NodeName| self.replication_address(n).to_string();
        match node.peer() {
            Some(peer) => {
                if let (Some(host_path), Some(address)) =
                    (self.host_path, self.host_path_address(node))
                {
                    c.set("net2", host_path.cidr(address));
                }
                c.set("nqn", self.nqn.as_str());
                if let Some((low, high)) = cntlid_range(node) {
                    c.set("cntlid", format!("{low}-{high}"));
                }
                // The peer's portals, for the discovery log.
                let mut portals = front(peer);
                if let Some(address) = self.host_path_address(peer) {
                    portals += &format!(",{address}");
                }
                c.set("peer", portals);
                if self.ha_keys {
                    self.set_key(&mut c);
                    c.set("node", node.as_str());
                    c.set("peer_repl", repl(peer));
                    c.set("witness", front(NodeName::Witness));
                    c.set("witness_repl", repl(NodeName::Witness));
                }
            }
            None => {
                if self.ha_keys {
                    self.set_key(&mut c);
                    c.set("role", "witness");
                    c.set("node_a", front(NodeName::A));
                    c.set("node_b", front(NodeName::B));
                    c.set("node_a_repl", repl(NodeName::A));
                    c.set("node_b_repl", repl(NodeName::B));
                }
            }
        }
        for (key, value) in KernelCmdline::parse(extra).words() {
            match value {
                Some(value) => c.set(key, value.as_str()),
                None => c.set_bare(key),
            };
        }
        c
    }
}

/// Names of what `up` creates for the setup in one directory. The names are
/// derived from the directory, so setups in different directories coexist
/// and `down` finds what an earlier `up` made without any state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNames {
    /// The network namespace holding the bridges and taps (and QEMU).
    pub netns: String,
    /// This machine's end of the veth pair into the front-end bridge.
    pub host_link: String,
    /// The end of the veth pair enslaved to the user's `--bridge`.
    pub user_link: String,
}

/// Front-end and replication bridges (inside the namespace).
pub const FRONT_END_BRIDGE: &str = "fe";
pub const REPLICATION_BRIDGE: &str = "repl";
/// Namespace ends of the veth pairs to this machine and to the user's bridge.
pub const HOST_PEER: &str = "host";
pub const USER_PEER: &str = "user";

impl NetNames {
    /// Names for the setup in `dir` (an absolute, canonical path).
    pub fn for_dir(dir: &Path) -> NetNames {
        use std::os::unix::ffi::OsStrExt;
        // FNV-1a: stable across Rust versions, unlike DefaultHasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in dir.as_os_str().as_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let tag = format!("{:08x}", (hash ^ (hash >> 32)) as u32);
        NetNames {
            netns: format!("tandem-{tag}"),
            // Interface names have at most 15 characters.
            host_link: format!("tdh{tag}"),
            user_link: format!("tdu{tag}"),
        }
    }

    /// The tap of `node`'s NIC `nic` (inside the namespace).
    pub fn tap(node: NodeName, nic: usize) -> String {
        let segment = if nic == 0 { "fe" } else { "repl" };
        format!("{}-{segment}", node.as_str())
    }

    /// The bridge NIC `nic` of every node is on.
    pub fn bridge(nic: usize) -> &'static str {
        if nic == 0 {
            FRONT_END_BRIDGE
        } else {
            REPLICATION_BRIDGE
        }
    }
}

/// The first route in `ip -4 route show` output (other than the default
/// route and routes through `own_link`) that overlaps `subnet`: adding our
/// front-end address would shadow or be shadowed by it.
pub fn conflicting_route(routes: &str, subnet: Subnet, own_link: &str) -> Option<String> {
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let Some(destination) = words.next() else {
            continue;
        };
        if destination == "default" || destination == "unreachable" {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.windows(2).any(|w| w[0] == "dev" && w[1] == own_link) {
            continue;
        }
        let route = match destination.split_once('/') {
            Some((a, p)) => a.parse::<Ipv4Addr>().ok().zip(p.parse::<u8>().ok()),
            None => destination.parse::<Ipv4Addr>().ok().map(|a| (a, 32)),
        };
        let Some((address, prefix)) = route else {
            continue;
        };
        if prefix > 32 {
            continue;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let common = mask & (u32::MAX << (32 - subnet.prefix));
        if u32::from(address) & common == u32::from(subnet.network) & common {
            return Some(line.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip() {
        for node in NodeName::ALL {
            assert_eq!(node.as_str().parse::<NodeName>().unwrap(), node);
        }
        assert!("c".parse::<NodeName>().is_err());
        assert!("A".parse::<NodeName>().is_err());
        assert_eq!(NodeName::A.peer(), Some(NodeName::B));
        assert_eq!(NodeName::Witness.nic_count(), 2);
        assert!(!NodeName::Witness.has_disk());
    }

    #[test]
    fn nics_parse_in_three_spellings_and_are_checked_per_node() {
        assert_eq!(parse_nic(NodeName::A, "net1").unwrap(), 1);
        assert_eq!(parse_nic(NodeName::A, "nic0").unwrap(), 0);
        assert_eq!(parse_nic(NodeName::B, "1").unwrap(), 1);
        assert_eq!(parse_nic(NodeName::Witness, "net1").unwrap(), 1);
        let err = parse_nic(NodeName::Witness, "net2")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node witness has no net2 (it has net0, net1)"),
            "{err}"
        );
        assert!(parse_nic(NodeName::A, "eth0").is_err());
        assert!(parse_nic(NodeName::A, "net2").is_err());
    }

    #[test]
    fn subnets_parse_and_place_hosts() {
        let s: Subnet = "10.77.0.0/24".parse().unwrap();
        assert_eq!(s, DEFAULT_FRONT_END);
        assert_eq!(s.host(1), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(s.last_host(), Ipv4Addr::new(10, 77, 0, 254));
        assert_eq!(s.cidr(s.host(3)), "10.77.0.3/24");
        assert!(s.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!s.contains(Ipv4Addr::new(10, 77, 1, 1)));
        let small: Subnet = "192.168.5.8/29".parse().unwrap();
        assert_eq!(small.last_host(), Ipv4Addr::new(192, 168, 5, 14));
        for bad in [
            "10.77.0.1/24",
            "10.77.0.0/30",
            "10.77.0.0/7",
            "10.77.0.0",
            "x/24",
            "10.77.0.0/x",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        assert!(
            "10.77.0.1/24"
                .parse::<Subnet>()
                .unwrap_err()
                .to_string()
                .contains("did you mean 10.77.0.0/24")
        );
        let wide: Subnet = "10.0.0.0/8".parse().unwrap();
        assert!(wide.overlaps(s) && s.overlaps(wide));
        assert!(!s.overlaps(DEFAULT_REPLICATION));
    }

    #[test]
    fn default_layout_matches_the_documented_addresses() {
        let l = PairLayout::default();
        l.validate().unwrap();
        assert_eq!(l.front_end_address(NodeName::A).to_string(), "10.77.0.1");
        assert_eq!(l.front_end_address(NodeName::B).to_string(), "10.77.0.2");
        assert_eq!(
            l.front_end_address(NodeName::Witness).to_string(),
            "10.77.0.3"
        );
        assert_eq!(l.replication_address(NodeName::A).to_string(), "10.78.0.1");
        assert_eq!(l.replication_address(NodeName::B).to_string(), "10.78.0.2");
        assert_eq!(
            l.replication_address(NodeName::Witness).to_string(),
            "10.78.0.3"
        );
        assert_eq!(l.host_address().to_string(), "10.77.0.254");
        let overlapping = PairLayout {
            replication: "10.77.0.128/25".parse().unwrap(),
            ..PairLayout::default()
        };
        assert!(overlapping.validate().is_err());
    }

    #[test]
    fn data_nodes_get_addresses_identity_and_ha_keys() {
        let l = PairLayout::default();
        assert_eq!(
            l.cmdline(NodeName::A, "").to_string(),
            "net0=10.77.0.1/24 net1=10.78.0.1/24 nqn=nqn.2026-11.io.tandem:storage \
             cntlid=1-32767 peer=10.77.0.2 status_nics=net0 node=a peer_repl=10.78.0.2 \
             witness=10.77.0.3 witness_repl=10.78.0.3"
        );
        assert_eq!(
            l.cmdline(NodeName::B, "").to_string(),
            "net0=10.77.0.2/24 net1=10.78.0.2/24 nqn=nqn.2026-11.io.tandem:storage \
             cntlid=32768-65519 peer=10.77.0.1 status_nics=net0 node=b peer_repl=10.78.0.1 \
             witness=10.77.0.3 witness_repl=10.78.0.3"
        );
        assert_eq!(
            l.cmdline(NodeName::Witness, "").to_string(),
            "net0=10.77.0.3/24 net1=10.78.0.3/24 status_nics=net0 role=witness \
             node_a=10.77.0.1 node_b=10.77.0.2 node_a_repl=10.78.0.1 node_b_repl=10.78.0.2"
        );
        let keyed = PairLayout {
            pair_key: Some("ab".repeat(32)),
            ..PairLayout::default()
        };
        for node in NodeName::ALL {
            assert_eq!(
                keyed.cmdline(node, "").get("pair_key"),
                Some("ab".repeat(32).as_str())
            );
        }
    }

    #[test]
    fn a_host_path_segment_is_net2_of_the_data_nodes_and_a_second_peer_portal() {
        let l = PairLayout {
            host_path: Some("10.79.0.0/24".parse().unwrap()),
            ..PairLayout::default()
        };
        l.validate().unwrap();
        assert_eq!(
            l.cmdline(NodeName::B, "").to_string(),
            "net0=10.77.0.2/24 net1=10.78.0.2/24 net2=10.79.0.2/24 \
             nqn=nqn.2026-11.io.tandem:storage cntlid=32768-65519 peer=10.77.0.1,10.79.0.1 \
             status_nics=net0 node=b peer_repl=10.78.0.1 witness=10.77.0.3 witness_repl=10.78.0.3"
        );
        assert_eq!(l.host_path_address(NodeName::Witness), None);
        assert_eq!(
            l.cmdline(NodeName::Witness, "").to_string(),
            PairLayout::default()
                .cmdline(NodeName::Witness, "")
                .to_string()
        );
        let overlapping = PairLayout {
            host_path: Some("10.78.0.0/16".parse().unwrap()),
            ..PairLayout::default()
        };
        assert!(overlapping.validate().is_err());
    }

    #[test]
    fn cntlid_ranges_are_disjoint_and_valid_for_the_image() {
        let (a_low, a_high) = cntlid_range(NodeName::A).unwrap();
        let (b_low, b_high) = cntlid_range(NodeName::B).unwrap();
        assert!(a_low >= 1 && a_high < b_low && b_high <= 0xffef);
        assert_eq!(cntlid_range(NodeName::Witness), None);
    }

    #[test]
    fn without_ha_keys_only_addresses_and_nvme_identity_are_passed() {
        let l = PairLayout {
            ha_keys: false,
            ..PairLayout::default()
        };
        let a = l.cmdline(NodeName::A, "").to_string();
        assert_eq!(
            a,
            "net0=10.77.0.1/24 net1=10.78.0.1/24 nqn=nqn.2026-11.io.tandem:storage \
             cntlid=1-32767 peer=10.77.0.2"
        );
        assert_eq!(
            l.cmdline(NodeName::Witness, "").to_string(),
            "net0=10.77.0.3/24 net1=10.78.0.3/24"
        );
    }

    #[test]
    fn the_users_words_come_last_and_replace_ours() {
        let l = PairLayout::default();
        let c = l.cmdline(NodeName::B, "log=debug hb_interval=20 peer=10.77.0.9 quiet");
        assert_eq!(c.get("peer"), Some("10.77.0.9"));
        let text = c.to_string();
        assert!(text.ends_with("log=debug hb_interval=20 quiet"), "{text}");
    }

    #[test]
    fn names_are_stable_short_and_distinct_per_directory() {
        let one = NetNames::for_dir(Path::new("/work/main/target/tandem-up"));
        let two = NetNames::for_dir(Path::new("/tmp/other"));
        assert_ne!(one, two);
        assert_eq!(
            one,
            NetNames::for_dir(Path::new("/work/main/target/tandem-up"))
        );
        assert!(one.netns.starts_with("tandem-"));
        assert!(one.host_link.len() <= 15 && one.user_link.len() <= 15);
        assert_eq!(NetNames::tap(NodeName::Witness, 0), "witness-fe");
        assert_eq!(NetNames::tap(NodeName::A, 1), "a-repl");
        assert_eq!(NetNames::bridge(1), "repl");
    }

    #[test]
    fn overlapping_host_routes_are_found() {
        let routes = "default via 192.0.2.1 dev eth0\n\
                      192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
                      10.77.0.0/24 dev tdh12345678 proto kernel scope link src 10.77.0.254\n";
        let front = DEFAULT_FRONT_END;
        assert_eq!(conflicting_route(routes, front, "tdh12345678"), None);
        assert_eq!(
            conflicting_route(routes, front, "tdhffffffff").as_deref(),
            Some("10.77.0.0/24 dev tdh12345678 proto kernel scope link src 10.77.0.254")
        );
        let wide = "10.0.0.0/8 via 192.0.2.9 dev eth0\n";
        assert!(conflicting_route(wide, front, "x").is_some());
        let host_route = "10.77.0.9 via 192.0.2.9 dev eth0\n";
        assert!(conflicting_route(host_route, front, "x").is_some());
        let elsewhere = "10.78.0.0/24 dev eth1\n172.16.0.0/12 dev eth2\n";
        assert_eq!(conflicting_route(elsewhere, front, "x"), None);
    }
}
