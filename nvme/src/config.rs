//! Target configuration: identity, namespaces, ANA groups, portals, limits.

use alloc::string::String;
use alloc::vec::Vec;

use crate::auth::{DhchapHost, Preferences};
use crate::error::Error;

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Asymmetric Namespace Access state of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AnaState {
    Optimized = 0x01,
    NonOptimized = 0x02,
    Inaccessible = 0x03,
    PersistentLoss = 0x04,
    Change = 0x0F,
}

impl AnaState {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Optimized,
            0x02 => Self::NonOptimized,
            0x03 => Self::Inaccessible,
            0x04 => Self::PersistentLoss,
            0x0F => Self::Change,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Optimized => "optimized",
            Self::NonOptimized => "non-optimized",
            Self::Inaccessible => "inaccessible",
            Self::PersistentLoss => "persistent-loss",
            Self::Change => "change",
        }
    }

    /// Whether I/O is served on a path in this state.
    pub fn serves_io(self) -> bool {
        matches!(self, Self::Optimized | Self::NonOptimized)
    }
}

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// 1-based namespace ID, at most [`Limits::max_namespaces`].
    pub nsid: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// log2 of the logical block size: 9 (512 B) or 12 (4 KiB).
    pub lba_shift: u8,
    /// Identifiers; both nodes of a pair must report the same ones.
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    /// ANA group this namespace belongs to (1-based).
    pub ana_group: u32,
}

/// IP address of a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalAddress {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A transport address where a subsystem can be reached (for the discovery log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Portal {
    /// NVMe port ID (PORTID of the discovery log entry).
    pub port_id: u16,
    pub address: PortalAddress,
    /// TCP port (TRSVCID), 4420 usually.
    pub port: u16,
}

/// Limits; the defaults suit the Linux host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum I/O queues a controller grants.
    pub max_io_queues: u16,
    /// Maximum entries of an I/O queue (CAP.MQES + 1, MAXCMD).
    pub max_queue_depth: u16,
    /// Maximum data transfer size in bytes (MDTS), a power of two, >= 4096.
    pub max_data_transfer: u32,
    /// Bytes of in-capsule data accepted (IOCCSZ - 64), a multiple of 16.
    pub in_capsule_data: u32,
    /// MAXH2CDATA: largest H2CData PDU the host may send; >= 4096, multiple of 4.
    pub max_h2c_data: u32,
    /// Bytes of write data being received by R2T plus read data waiting to be
    /// sent, per connection. Commands wait for room; at least `max_data_transfer`.
    pub data_budget: u32,
    /// The same, summed over every connection of the target: bounds the
    /// memory all hosts together can make the target hold for data.
    pub total_data_budget: u64,
    /// NN and MNAN: highest namespace ID.
    pub max_namespaces: u32,
    /// ANATT, seconds.
    pub ana_transition_time: u8,
    /// Keep-alive timeout given to a discovery controller whose host asked for none (ms).
    pub discovery_kato_ms: u32,
    /// A connection that has not completed ICReq and Connect within this time is closed (ms).
    pub handshake_timeout_ms: u64,
    /// Outstanding Asynchronous Event Requests per controller (AERL + 1).
    pub max_aers: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_io_queues: 16,
            max_queue_depth: 128,
            max_data_transfer: 128 * 1024,
            in_capsule_data: 8192,
            max_h2c_data: 128 * 1024,
            data_budget: 4 * 1024 * 1024,
            total_data_budget: 64 * 1024 * 1024,
            max_namespaces: 1024,
            ana_transition_time: 10,
            discovery_kato_ms: 120_000,
            handshake_timeout_ms: 10_000,
            max_aers: 4,
        }
    }
}

/// Everything the target reports and enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub subsystem_nqn: String,
    /// Serial number (up to 20 ASCII characters).
    pub serial: String,
    /// Model number (up to 40 ASCII characters).
    pub model: String,
    /// Firmware revision (up to 8 ASCII characters).
    pub firmware_revision: String,
    pub namespaces: Vec<NamespaceConfig>,
    /// ANA groups and their initial states. Every namespace's group must be here.
    pub ana_groups: Vec<(u32, AnaState)>,
    /// Controller IDs this node hands out (inclusive); the two nodes of a pair
    /// use disjoint ranges.
    pub cntlid_min: u16,
    pub cntlid_max: u16,
    /// Host NQNs allowed to connect to the NVM subsystem; empty = any host.
    pub allowed_hosts: Vec<String>,
    /// Whether the backing store has a volatile write cache (VWC); Flush is then
    /// meaningful and writes are durable only after Flush or FUA.
    pub volatile_write_cache: bool,
    /// This node's portals and the peer's, listed by the discovery log.
    pub portals: Vec<Portal>,
    pub peer_portals: Vec<Portal>,
    /// Hosts that must authenticate (DH-HMAC-CHAP) before any other command
    /// of theirs is served, on every queue; one entry per host NQN.
    pub dhchap_hosts: Vec<DhchapHost>,
    /// The hash functions and DH groups the controller picks from, most
    /// preferred first, among those the host offers.
    pub dhchap_preferences: Preferences,
    /// Accept header / data digests when the host asks.
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
    pub limits: Limits,
}

impl TargetConfig {
    /// A configuration with one subsystem and no namespaces.
    pub fn new(subsystem_nqn: &str) -> Self {
        TargetConfig {
            subsystem_nqn: subsystem_nqn.into(),
            serial: "tandem0000".into(),
            model: "tandem".into(),
            firmware_revision: env!("CARGO_PKG_VERSION").into(),
            namespaces: Vec::new(),
            ana_groups: alloc::vec![(1, AnaState::Optimized)],
            cntlid_min: 1,
            cntlid_max: 0xFFEF,
            allowed_hosts: Vec::new(),
            dhchap_hosts: Vec::new(),
            dhchap_preferences: Preferences::default(),
            volatile_write_cache: true,
            portals: Vec::new(),
            peer_portals: Vec::new(),
            allow_header_digest: true,
            allow_data_digest: true,
            limits: Limits::default(),
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let l = &self.limits;
        let nqn_ok = |s: &str| !s.is_empty() && s.len() < 256;
        if !nqn_ok(&self.subsystem_nqn) || self.subsystem_nqn == DISCOVERY_NQN {
            return Err(Error::InvalidConfig(
                "subsystem NQN must be 1..=255 bytes and not the discovery NQN",
            ));
        }
        if self.serial.len() > 20 || self.model.len() > 40 || self.firmware_revision.len() > 8 {
            return Err(Error::InvalidConfig(
                "serial <= 20, model <= 40, firmware revision <= 8 bytes",
            ));
        }
        if self.cntlid_min == 0 || self.cntlid_min > self.cntlid_max || self.cntlid_max > 0xFFEF {
            return Err(Error::InvalidConfig(
                "CNTLID range must lie within 1..=0xFFEF",
            ));
        }
        if l.max_io_queues == 0 || l.max_io_queues > 0xFFFE {
            return Err(Error::InvalidConfig("max_io_queues must be 1..=65534"));
        }
        if l.max_queue_depth < 2 {
            return Err(Error::InvalidConfig("max_queue_depth must be >= 2"));
        }
        if !l.max_data_transfer.is_power_of_two()
            || l.max_data_transfer < 4096
            || l.max_data_transfer > 1 << 24
        {
            return Err(Error::InvalidConfig(
                "max_data_transfer must be a power of two in 4 KiB..=16 MiB",
            ));
        }
        if !l.in_capsule_data.is_multiple_of(16) || l.in_capsule_data > 1 << 20 {
            return Err(Error::InvalidConfig(
                "in_capsule_data must be a multiple of 16, <= 1 MiB",
            ));
        }
        if l.max_h2c_data < 4096 || !l.max_h2c_data.is_multiple_of(4) {
            return Err(Error::InvalidConfig(
                "max_h2c_data must be >= 4096 and a multiple of 4",
            ));
        }
        if l.data_budget < l.max_data_transfer {
            return Err(Error::InvalidConfig(
                "data_budget must be >= max_data_transfer",
            ));
        }
        if l.total_data_budget < l.data_budget as u64 {
            return Err(Error::InvalidConfig(
                "total_data_budget must be >= data_budget",
            ));
        }
        if l.max_namespaces == 0 || l.max_namespaces > 4096 {
            return Err(Error::InvalidConfig("max_namespaces must be 1..=4096"));
        }
        if l.max_aers == 0 || l.max_aers > 16 {
            return Err(Error::InvalidConfig("max_aers must be 1..=16"));
        }
        if self.ana_groups.is_empty() || self.ana_groups.len() > 128 {
            return Err(Error::InvalidConfig("1..=128 ANA groups"));
        }
        for (i, (g, _)) in self.ana_groups.iter().enumerate() {
            if *g == 0 || *g > 128 || self.ana_groups[..i].iter().any(|(h, _)| h == g) {
                return Err(Error::InvalidConfig(
                    "ANA group IDs must be unique, 1..=128",
                ));
            }
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if ns.nsid == 0 || ns.nsid > l.max_namespaces {
                return Err(Error::InvalidConfig(
                    "namespace ID must be 1..=max_namespaces",
                ));
            }
            if self.namespaces[..i].iter().any(|o| o.nsid == ns.nsid) {
                return Err(Error::InvalidConfig("namespace IDs must be unique"));
            }
            if ns.lba_shift != 9 && ns.lba_shift != 12 {
                return Err(Error::InvalidConfig(
                    "LBA size must be 512 (shift 9) or 4096 (shift 12)",
                ));
            }
            if ns.blocks == 0
                || ns
                    .blocks
                    .checked_shl(ns.lba_shift as u32)
                    .is_none_or(|b| b >> ns.lba_shift != ns.blocks)
            {
                return Err(Error::InvalidConfig(
                    "namespace size must be non-zero and fit in 64 bits of bytes",
                ));
            }
            if !self.ana_groups.iter().any(|(g, _)| *g == ns.ana_group) {
                return Err(Error::InvalidConfig(
                    "a namespace names an ANA group that is not configured",
                ));
            }
        }
        for (i, h) in self.dhchap_hosts.iter().enumerate() {
            if !nqn_ok(&h.host_nqn) {
                return Err(Error::InvalidConfig(
                    "DH-HMAC-CHAP host NQNs must be 1..=255 bytes",
                ));
            }
            if self.dhchap_hosts[..i]
                .iter()
                .any(|o| o.host_nqn == h.host_nqn)
            {
                return Err(Error::InvalidConfig("one DH-HMAC-CHAP entry per host NQN"));
            }
        }
        if self.dhchap_preferences.hashes.is_empty() || self.dhchap_preferences.groups.is_empty() {
            return Err(Error::InvalidConfig(
                "DH-HMAC-CHAP needs at least one hash function and one DH group",
            ));
        }
        for h in &self.allowed_hosts {
            if !nqn_ok(h) {
                return Err(Error::InvalidConfig(
                    "allowed host NQNs must be 1..=255 bytes",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(nsid: u32) -> NamespaceConfig {
        NamespaceConfig {
            nsid,
            blocks: 8,
            lba_shift: 9,
            nguid: [1; 16],
            uuid: [2; 16],
            ana_group: 1,
        }
    }

    fn bad(f: impl FnOnce(&mut TargetConfig)) -> Error {
        let mut c = TargetConfig::new("nqn.2026-11.dev.tandem:t");
        c.namespaces = alloc::vec![ns(1)];
        f(&mut c);
        c.validate().unwrap_err()
    }

    #[test]
    fn defaults_are_valid_and_meet_the_linux_minimums() {
        let c = TargetConfig::new("nqn.2026-11.dev.tandem:t");
        c.validate().unwrap();
        assert!(c.limits.max_queue_depth >= 128);
        assert!(c.limits.max_data_transfer >= 128 * 1024);
        assert!(c.limits.in_capsule_data >= 8192);
        assert!(
            c.limits.max_h2c_data >= c.limits.max_data_transfer,
            "pre-5.17 hosts send one H2CData per R2T"
        );
    }

    #[test]
    fn every_invalid_value_is_refused() {
        let cases: [fn(&mut TargetConfig); 18] = [
            |c| c.subsystem_nqn = String::new(),
            |c| c.subsystem_nqn = DISCOVERY_NQN.into(),
            |c| c.serial = "x".repeat(21),
            |c| c.cntlid_min = 0,
            |c| c.cntlid_max = 0xFFF0,
            |c| c.limits.max_io_queues = 0,
            |c| c.limits.max_queue_depth = 1,
            |c| c.limits.max_data_transfer = 3000,
            |c| c.limits.in_capsule_data = 100,
            |c| c.limits.max_h2c_data = 4098,
            |c| c.limits.data_budget = 1,
            |c| c.limits.total_data_budget = 1,
            |c| c.limits.max_aers = 0,
            |c| c.ana_groups = alloc::vec![(1, AnaState::Optimized), (1, AnaState::Optimized)],
            |c| c.namespaces.push(ns(1)),
            |c| c.namespaces[0].lba_shift = 10,
            |c| c.namespaces[0].ana_group = 7,
            |c| c.namespaces[0].blocks = u64::MAX,
        ];
        for (i, f) in cases.into_iter().enumerate() {
            assert!(matches!(bad(f), Error::InvalidConfig(_)), "case {i}");
        }
        assert!(matches!(
            bad(|c| c.allowed_hosts.push(String::new())),
            Error::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(|c| c.namespaces[0].nsid = 0),
            Error::InvalidConfig(_)
        ));
    }
}
