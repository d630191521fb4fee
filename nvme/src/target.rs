//! The shared target: configuration, controllers, ANA state, events.
//!
//! One [`Target`] serves every connection of a node. A controller spans one
//! admin queue and its I/O queues, each on its own TCP connection; its state
//! lives here so that every [`Connection`](crate::Connection) of it sees the
//! same thing. Connections take `&mut Target` in each call: there is no
//! interior mutability and no locking.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::Instant;
use crate::config::{AnaState, NamespaceConfig, Portal, TargetConfig};
use crate::digest::Crc32c;
use crate::error::Error;

/// Which subsystem a controller belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    /// The NVM subsystem with the namespaces.
    Nvm,
    /// The discovery subsystem.
    Discovery,
}

/// Why a controller went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// The host was silent longer than its keep-alive timeout.
    KeepAliveExpired,
    /// The admin queue's connection closed (host disconnect, reset or transport error).
    AdminQueueClosed,
}

/// Things the console (or a log) may want to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetEvent {
    ControllerCreated {
        cntlid: u16,
        subsystem: SubsystemKind,
        host_nqn: String,
    },
    ControllerRemoved {
        cntlid: u16,
        reason: RemovalReason,
    },
    AnaStateChanged {
        group: u32,
        state: AnaState,
    },
}

/// Async event (AEN) completion dword 0 for an ANA change notice:
/// type Notice (2), information ANA Change (3), log page 0Ch.
pub const AEN_ANA_CHANGE: u32 = 0x000C_0302;
/// The OAES / Async Event Configuration bit for ANA change notices.
pub const AEC_ANA_CHANGE: u32 = 1 << 11;

/// Per-controller state shared by its queues.
#[derive(Debug)]
pub(crate) struct Controller {
    pub instance: u64,
    pub cntlid: u16,
    pub kind: SubsystemKind,
    pub host_nqn: String,
    pub host_id: [u8; 16],
    pub kato_ms: u32,
    pub last_activity: Instant,
    pub cc: u32,
    pub csts: u32,
    /// Granted I/O queues (after Set Features Number of Queues).
    pub io_queues_granted: Option<u16>,
    /// Connected I/O queue IDs.
    pub io_queues: Vec<u16>,
    pub async_event_config: u32,
    /// AEN completions waiting for an AER.
    pub pending_aens: VecDeque<u32>,
    /// An ANA change notice was sent and the host has not read the ANA log since.
    pub ana_aen_masked: bool,
    pub write_cache_enabled: bool,
}

impl Controller {
    pub fn enabled(&self) -> bool {
        self.cc & 1 != 0 && self.csts & 1 != 0
    }
}

/// What the console shows about a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo<'a> {
    pub cntlid: u16,
    pub subsystem: SubsystemKind,
    pub host_nqn: &'a str,
    pub host_id: [u8; 16],
    pub kato_ms: u32,
    pub io_queues: &'a [u16],
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AnaGroup {
    pub id: u32,
    pub state: AnaState,
    pub change_count: u64,
}

/// Totals for the SMART / health log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStats {
    pub read_commands: u64,
    pub write_commands: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Queues whose host authenticated (DH-HMAC-CHAP), and authentications
    /// that failed (each also a console line).
    pub authentications: u64,
    pub authentication_failures: u64,
}

/// The NVMe/TCP target shared by all connections of one node.
#[derive(Debug)]
pub struct Target {
    pub(crate) config: TargetConfig,
    pub(crate) crc: Crc32c,
    pub(crate) ana_groups: Vec<AnaGroup>,
    pub(crate) ana_change_count: u64,
    pub(crate) controllers: BTreeMap<u16, Controller>,
    next_cntlid: u16,
    next_instance: u64,
    events: VecDeque<TargetEvent>,
    not_ready: Vec<u32>,
    /// Hosts may connect to the NVM subsystem (see `set_admitting_hosts`).
    pub(crate) admitting_hosts: bool,
    pub(crate) stats: TargetStats,
    pub(crate) discovery_generation: u64,
    /// Data bytes held by all connections (see `Limits::total_data_budget`).
    /// Shared with each connection so that draining output, which needs no
    /// `&mut Target`, can release it.
    pub(crate) data_in_use: Arc<AtomicU64>,
    /// Challenges and DH exponents of in-band authentication.
    pub(crate) random: crate::auth::Drbg,
}

const MAX_EVENTS: usize = 256;

impl Target {
    /// Mixes entropy (from the hardware) into the random bit generator the
    /// challenges and DH exponents of in-band authentication come from. The
    /// caller must do so before the first connection when `dhchap_hosts` is
    /// not empty.
    pub fn seed_random(&mut self, entropy: &[u8]) {
        self.random.reseed(entropy);
    }

    /// The DH-HMAC-CHAP entry of `host_nqn`, if that host must authenticate.
    pub(crate) fn dhchap_host(&self, host_nqn: &str) -> Option<usize> {
        self.config
            .dhchap_hosts
            .iter()
            .position(|h| h.host_nqn == host_nqn)
    }

    /// Checks the configuration and builds the target.
    pub fn new(config: TargetConfig) -> Result<Self, Error> {
        config.validate()?;
        let ana_groups = config
            .ana_groups
            .iter()
            .map(|&(id, state)| AnaGroup {
                id,
                state,
                change_count: 1,
            })
            .collect();
        let next_cntlid = config.cntlid_min;
        Ok(Target {
            config,
            crc: Crc32c::default(),
            ana_groups,
            ana_change_count: 1,
            controllers: BTreeMap::new(),
            next_cntlid,
            next_instance: 1,
            events: VecDeque::new(),
            not_ready: Vec::new(),
            admitting_hosts: true,
            stats: TargetStats::default(),
            discovery_generation: 1,
            data_in_use: Arc::new(AtomicU64::new(0)),
            random: crate::auth::Drbg::new(b"tandem nvme: seed with Target::seed_random"),
        })
    }

    /// Uses another CRC-32C implementation (e.g. the SSE4.2 instruction) for digests.
    pub fn set_crc32c(&mut self, crc: Crc32c) {
        self.crc = crc;
    }

    pub fn config(&self) -> &TargetConfig {
        &self.config
    }

    pub fn stats(&self) -> TargetStats {
        self.stats
    }

    /// Bytes of data buffers all connections hold right now (write data being
    /// received, read data being sent).
    pub fn data_in_use(&self) -> u64 {
        self.data_in_use.load(Ordering::Relaxed)
    }

    pub(crate) fn namespace(&self, nsid: u32) -> Option<&NamespaceConfig> {
        self.config.namespaces.iter().find(|n| n.nsid == nsid)
    }

    /// The highest ANA group ID (ANAGRPMAX and NANAGRPID).
    pub(crate) fn ana_group_max(&self) -> u32 {
        self.ana_groups.iter().map(|g| g.id).max().unwrap_or(1)
    }

    pub fn ana_state(&self, group: u32) -> Option<AnaState> {
        self.ana_groups
            .iter()
            .find(|g| g.id == group)
            .map(|g| g.state)
    }

    pub(crate) fn namespace_ana_state(&self, ns: &NamespaceConfig) -> AnaState {
        self.ana_state(ns.ana_group)
            .unwrap_or(AnaState::Inaccessible)
    }

    /// Sets the ANA state of a group as this node reports it. A change bumps
    /// the ANA log's change counts and queues an ANA change notice for every
    /// NVM controller that enabled it; the notices go out when each admin
    /// connection is next polled (call [`Connection::poll`](crate::Connection::poll)
    /// on every connection after this).
    pub fn set_ana_state(&mut self, group: u32, state: AnaState) -> Result<(), Error> {
        let g = self
            .ana_groups
            .iter_mut()
            .find(|g| g.id == group)
            .ok_or(Error::NoSuchAnaGroup(group))?;
        if g.state == state {
            return Ok(());
        }
        g.state = state;
        self.ana_change_count = self.ana_change_count.wrapping_add(1).max(1);
        g.change_count = self.ana_change_count;
        for c in self.controllers.values_mut() {
            if c.kind == SubsystemKind::Nvm
                && c.async_event_config & AEC_ANA_CHANGE != 0
                && !c.ana_aen_masked
            {
                c.ana_aen_masked = true;
                c.pending_aens.push_back(AEN_ANA_CHANGE);
            }
        }
        self.push_event(TargetEvent::AnaStateChanged { group, state });
        Ok(())
    }

    /// Marks a namespace ready or not; I/O to a namespace that is not ready
    /// fails with Namespace Not Ready (retryable).
    pub fn set_namespace_ready(&mut self, nsid: u32, ready: bool) -> Result<(), Error> {
        if self.namespace(nsid).is_none() {
            return Err(Error::NoSuchNamespace(nsid));
        }
        self.not_ready.retain(|&n| n != nsid);
        if !ready {
            self.not_ready.push(nsid);
        }
        Ok(())
    }

    /// While false, a host's Connect of an admin queue to the NVM subsystem
    /// fails with Controller Busy, without Do Not Retry: the host retries
    /// later (Linux: every `reconnect_delay`). For a namespace whose size is
    /// not known yet (an HA node that has not met its peer): a host must
    /// not see a size that would change under it. Controllers already
    /// connected are not affected; discovery is always admitted.
    pub fn set_admitting_hosts(&mut self, admitting: bool) {
        self.admitting_hosts = admitting;
    }

    pub fn admitting_hosts(&self) -> bool {
        self.admitting_hosts
    }

    /// Changes a namespace's size (in logical blocks). Meant for before any
    /// host was admitted: connected hosts are not told.
    pub fn set_namespace_blocks(&mut self, nsid: u32, blocks: u64) -> Result<(), Error> {
        let ns = self
            .config
            .namespaces
            .iter_mut()
            .find(|n| n.nsid == nsid)
            .ok_or(Error::NoSuchNamespace(nsid))?;
        ns.blocks = blocks;
        Ok(())
    }

    pub(crate) fn namespace_ready(&self, nsid: u32) -> bool {
        !self.not_ready.contains(&nsid)
    }

    /// Replaces the peer portals listed by the discovery log.
    pub fn set_peer_portals(&mut self, portals: Vec<Portal>) {
        self.config.peer_portals = portals;
        self.discovery_generation += 1;
    }

    /// The next event for the console, if any (the oldest are dropped past 256).
    pub fn poll_event(&mut self) -> Option<TargetEvent> {
        self.events.pop_front()
    }

    pub(crate) fn push_event(&mut self, e: TargetEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Connected controllers, for the console.
    pub fn controllers(&self) -> impl Iterator<Item = ControllerInfo<'_>> {
        self.controllers.values().map(|c| ControllerInfo {
            cntlid: c.cntlid,
            subsystem: c.kind,
            host_nqn: &c.host_nqn,
            host_id: c.host_id,
            kato_ms: c.kato_ms,
            io_queues: &c.io_queues,
            enabled: c.enabled(),
        })
    }

    /// Removes every controller whose host has been silent past its KATO.
    /// Their connections notice at their next call and close. Connections also
    /// check their own controller in [`Connection::poll`](crate::Connection::poll),
    /// so calling this is optional.
    pub fn poll(&mut self, now: Instant) {
        let expired: Vec<u16> = self
            .controllers
            .values()
            .filter(|c| keep_alive_expired(c, now))
            .map(|c| c.cntlid)
            .collect();
        for cntlid in expired {
            self.remove_controller(cntlid, RemovalReason::KeepAliveExpired);
        }
    }

    /// The earliest time at which [`Target::poll`] may expire a controller.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.controllers
            .values()
            .filter(|c| c.kato_ms != 0)
            .map(|c| c.last_activity.add_millis(c.kato_ms as u64))
            .min()
    }

    pub(crate) fn controller(&self, cntlid: u16, instance: u64) -> Option<&Controller> {
        self.controllers
            .get(&cntlid)
            .filter(|c| c.instance == instance)
    }

    pub(crate) fn controller_mut(&mut self, cntlid: u16, instance: u64) -> Option<&mut Controller> {
        self.controllers
            .get_mut(&cntlid)
            .filter(|c| c.instance == instance)
    }

    pub(crate) fn expire_if_silent(&mut self, cntlid: u16, instance: u64, now: Instant) -> bool {
        match self.controller(cntlid, instance) {
            Some(c) if keep_alive_expired(c, now) => {
                self.remove_controller(cntlid, RemovalReason::KeepAliveExpired);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    pub(crate) fn remove_controller(&mut self, cntlid: u16, reason: RemovalReason) {
        if self.controllers.remove(&cntlid).is_some() {
            log::info!("nvme: controller {cntlid} removed: {reason:?}");
            self.push_event(TargetEvent::ControllerRemoved { cntlid, reason });
        }
    }

    /// Allocates a CNTLID from the configured range and creates the controller.
    pub(crate) fn create_controller(
        &mut self,
        kind: SubsystemKind,
        host_nqn: String,
        host_id: [u8; 16],
        kato_ms: u32,
        now: Instant,
    ) -> Option<(u16, u64)> {
        let (min, max) = (self.config.cntlid_min, self.config.cntlid_max);
        let span = (max - min) as u32 + 1;
        let mut cand = self.next_cntlid.clamp(min, max);
        for _ in 0..span {
            if !self.controllers.contains_key(&cand) {
                break;
            }
            cand = if cand == max { min } else { cand + 1 };
        }
        if self.controllers.contains_key(&cand) {
            return None;
        }
        // Hand out IDs round-robin so a quickly reconnecting host does not get
        // the ID of the controller it just lost.
        self.next_cntlid = if cand == max { min } else { cand + 1 };
        let instance = self.next_instance;
        self.next_instance += 1;
        let kato_ms = if kind == SubsystemKind::Discovery && kato_ms == 0 {
            self.config.limits.discovery_kato_ms
        } else {
            kato_ms
        };
        self.controllers.insert(
            cand,
            Controller {
                instance,
                cntlid: cand,
                kind,
                host_nqn: host_nqn.clone(),
                host_id,
                kato_ms,
                last_activity: now,
                cc: 0,
                csts: 0,
                io_queues_granted: None,
                io_queues: Vec::new(),
                async_event_config: 0,
                pending_aens: VecDeque::new(),
                ana_aen_masked: false,
                write_cache_enabled: self.config.volatile_write_cache,
            },
        );
        log::info!("nvme: controller {cand} created for {host_nqn}");
        self.push_event(TargetEvent::ControllerCreated {
            cntlid: cand,
            subsystem: kind,
            host_nqn,
        });
        Some((cand, instance))
    }

    pub(crate) fn host_allowed(&self, host_nqn: &str) -> bool {
        self.config.allowed_hosts.is_empty()
            || self.config.allowed_hosts.iter().any(|h| h == host_nqn)
    }
}

fn keep_alive_expired(c: &Controller, now: Instant) -> bool {
    c.kato_ms != 0 && now.millis().saturating_sub(c.last_activity.millis()) > c.kato_ms as u64
}
