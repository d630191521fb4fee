//! A data node's own front-end addresses (`docs/ha-protocol.md` §16, rules
//! 6 and 7): their announcements (gratuitous ARP request and reply, on the
//! locktime schedule of `tandem_ha::announce`), and the gate that keeps a
//! node that may have been deposed while it could not run — paused, hung,
//! cut off — from answering ARP for them until it knows the pair's current
//! record. The NICs guard the addresses themselves: another station's
//! announcement of one quiets the NIC's ARP for it before the stack sees
//! the frame (`tandem_net::FrameDevice::guard_address`); this opens it
//! again when the gate says so.

use alloc::vec::Vec;
use core::fmt::Write;

use tandem_ha::announce::{Announcement, ArpSchedule, GateView, OwnAddressGate, QuietReason};
use tandem_ha::node::Status;
use tandem_ha::{Duration, Instant};
use tandem_net::FrameQueues;
use tandem_net::frames;
use tandem_net::smoltcp::time::Instant as NetInstant;
use tandem_net::smoltcp::wire::Ipv4Address;

use crate::config::Config;
use crate::port::NetPort;

pub struct OwnAddresses {
    gate: OwnAddressGate,
    failure_timeout: Duration,
    /// The pair's members (peer and witness, every address): ARP to them
    /// goes out even while quiet, so that the node can learn where it
    /// stands.
    members: Vec<Ipv4Address>,
    guarded: bool,
    last_poll_micros: Option<u64>,
    announcement: Option<Announcement>,
    schedule: ArpSchedule,
    announcements_sent: u64,
    /// ARP packets the NICs withheld from a quiet address, at the last look.
    withheld: u64,
}

impl OwnAddresses {
    pub fn new(config: &Config) -> Self {
        let mut members: Vec<Ipv4Address> = config
            .nvme
            .peer_portals
            .iter()
            .map(|(address, _)| Ipv4Address::from_octets(*address))
            .collect();
        members.extend(
            [
                config.ha.peer_replication,
                config.ha.witness,
                config.ha.witness_replication,
            ]
            .into_iter()
            .flatten()
            .map(Ipv4Address::from_octets),
        );
        Self {
            gate: OwnAddressGate::new(),
            failure_timeout: Duration::from_millis(config.ha.failure_timeout_ms),
            members,
            guarded: false,
            last_poll_micros: None,
            announcement: None,
            schedule: ArpSchedule::linux_default(),
            announcements_sent: 0,
            withheld: 0,
        }
    }

    /// Announces the node's own addresses on the locktime schedule (from
    /// now), unless the gate is shut; a new start replaces one under way.
    pub fn announce(&mut self, now_micros: u64) {
        self.announcement = Some(Announcement::start(
            self.schedule,
            Instant::from_micros(now_micros),
        ));
    }

    /// Every round of the loop: conflicts the NICs saw, a gap in the loop.
    pub fn watch<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        console: &mut dyn Write,
        now_micros: u64,
    ) -> bool {
        let now = Instant::from_micros(now_micros);
        if !self.guarded {
            self.guarded = true;
            for port in nets.iter_mut() {
                if let Some(own) = port.nic.address() {
                    port.nic.device_mut().guard_address(own.address());
                }
                port.nic.device_mut().set_quiet_exempt(self.members.clone());
            }
        }
        let mut busy = false;
        if let Some(last) = self.last_poll_micros {
            let gap = Duration::from_micros(now_micros.saturating_sub(last));
            if self.gate.open() {
                self.gate.on_gap(now, gap, self.failure_timeout);
                if !self.gate.open() {
                    let _ = writeln!(
                        console,
                        "tandem: did not run for {} ms: own addresses quiet until the pair is heard",
                        gap.as_millis()
                    );
                    busy = true;
                }
            }
        }
        self.last_poll_micros = Some(now_micros);
        for port in nets.iter_mut() {
            if let Some((address, mac)) = port.nic.device_mut().take_conflict() {
                let was_open = self.gate.open();
                self.gate.on_conflict(now);
                if was_open {
                    let _ = writeln!(
                        console,
                        "tandem: {address} announced by {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}: own addresses quiet until the pair is heard",
                        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
                    );
                }
                busy = true;
            }
        }
        self.withheld = nets
            .iter()
            .map(|port| port.nic.device().counters().arp_withheld.get())
            .sum();
        if !self.gate.open() {
            // A conflict quieted one NIC; a gap quiets none: every own
            // address is quiet until the gate opens.
            set_quiet(nets, true);
        }
        busy
    }

    /// With the node's status (every decision round): opens the gate when
    /// the node is current again, and sends the announcements due.
    pub fn decide<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        console: &mut dyn Write,
        now_micros: u64,
        status: &Status,
    ) -> bool {
        let now = Instant::from_micros(now_micros);
        let mut busy = false;
        if !self.gate.open() {
            let links = (status.links as usize).min(status.peer_heard.len());
            let mut heard = Vec::with_capacity(2 * links);
            heard.extend_from_slice(&status.peer_heard[..links]);
            heard.extend_from_slice(&status.witness_heard[..links]);
            let view = GateView {
                role: status.role,
                lease_age: status.lease_age,
                members_heard: &heard,
            };
            let why = self.gate.quiet().map(|(_, why)| why);
            if self.gate.update(now, view) {
                set_quiet(nets, false);
                let _ = writeln!(
                    console,
                    "tandem: own addresses answered again ({} in epoch {}, after {})",
                    status.role,
                    status.epoch,
                    match why {
                        Some(QuietReason::Stalled) => "a stall",
                        _ => "a conflict",
                    }
                );
                self.announce(now_micros);
                busy = true;
            }
        }
        if let Some(announcement) = self.announcement.as_mut() {
            if self.gate.open() && announcement.poll(now) {
                announce_own(nets, now_micros);
                self.announcements_sent += 1;
                busy = true;
            }
            if announcement.finished() || !self.gate.open() {
                self.announcement = None;
            }
        }
        busy
    }

    pub fn open(&self) -> bool {
        self.gate.open()
    }

    /// For `status`.
    pub fn status_text(&self) -> alloc::string::String {
        let (conflicts, stalls) = self.gate.counts();
        alloc::format!(
            "own addresses: {}; conflicts {conflicts}, stalls {stalls}, ARP withheld {}, announcements {}",
            if self.gate.open() {
                "answered"
            } else {
                "quiet"
            },
            self.withheld,
            self.announcements_sent
        )
    }
}

fn set_quiet<Q: FrameQueues>(nets: &mut [NetPort<Q>], quiet: bool) {
    for port in nets.iter_mut() {
        if let Some(own) = port.nic.address() {
            if port.nic.device().is_quiet(own.address()) != quiet {
                port.nic.device_mut().set_quiet(own.address(), quiet);
            }
        }
    }
}

/// A gratuitous ARP request and reply for every NIC's own address (a quiet
/// NIC withholds them).
pub fn announce_own<Q: FrameQueues>(nets: &mut [NetPort<Q>], now_micros: u64) {
    let now = NetInstant::from_micros(now_micros as i64);
    for port in nets.iter_mut() {
        if let Some(own) = port.nic.address() {
            let mac = port.nic.device().mac_address();
            port.nic
                .send_frame(now, &frames::gratuitous_arp(mac, own.address()));
            port.nic
                .send_frame(now, &frames::gratuitous_arp_reply(mac, own.address()));
        }
    }
}
