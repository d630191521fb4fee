//! Takeover of a failed peer's front-end addresses (`docs/ha-protocol.md`
//! §16): each data node reports its hosts' NVMe/TCP connections to its peer;
//! a primary whose peer has gone silent on every link claims the peer's
//! portal addresses on its own NICs, announces them with gratuitous ARP and
//! "tickles" every connection the peer last reported, so that the hosts'
//! half-open connections to the dead node are reset within a round trip
//! instead of waiting for keep-alive and TCP timeouts. The decision is
//! `tandem_ha::takeover`'s; the frames are `tandem_net::frames`'.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::config::Config;
use tandem_ha::announce::{Announcement, ArpSchedule};
use tandem_ha::node::Status;
use tandem_ha::takeover::{PeerView, ROUND_OFFSETS_MS, Takeover};
use tandem_ha::wire::connections::{ConnectionEntry, ConnectionList, MAX_ENTRIES};
use tandem_ha::{Duration, Instant, NodeId};
use tandem_net::FrameQueues;
use tandem_net::frames::{self, Endpoint};
use tandem_net::smoltcp::time::Instant as NetInstant;
use tandem_net::smoltcp::wire::{IpAddress, Ipv4Address};

use crate::own_address::OwnAddresses;
use crate::port::NetPort;
use crate::storage::NvmeService;

/// A node reports its connections this often, at once when a connection
/// comes or goes, and when one closes otherwise (looked at every
/// [`REPORT_CHECK_MILLIS`]).
const REPORT_INTERVAL_MILLIS: u64 = 1000;
const REPORT_CHECK_MILLIS: u64 = 100;
/// How often the decision looks at the node's status.
const DECIDE_MICROS: u64 = 5_000;

pub use tandem_ha::wire::connections::is_connection_list;

pub struct AddressTakeover {
    me: NodeId,
    decision: Takeover,
    /// The peer's portal addresses (`peer=`), the ones a takeover claims.
    peer_portals: Vec<Ipv4Address>,
    /// The peer's newest connection list.
    peer_list: Option<ConnectionList>,
    lists_received: u64,
    lists_dropped: u64,
    last_drop: Option<String>,
    /// This node's own report.
    own: ConnectionList,
    next_report_ms: u64,
    next_check_ms: u64,
    /// The NVMe service's connection fingerprint at the last look.
    fingerprint: (usize, u64),
    next_decision_micros: u64,
    /// (NIC, address) claimed now.
    claimed: Vec<(usize, Ipv4Address)>,
    /// The claimed addresses' announcements, from the claim.
    claim_announcement: Option<Announcement>,
    /// This node's own addresses: their announcements and their gate.
    own_addresses: OwnAddresses,
    announced_own: bool,
    tickles_sent: u64,
}

fn ipv4(address: IpAddress) -> Option<Ipv4Address> {
    match address {
        IpAddress::Ipv4(address) => Some(address),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl AddressTakeover {
    pub fn new(config: &Config, me: NodeId, boot: u32, now_micros: u64) -> Self {
        Self {
            me,
            decision: Takeover::new(
                Duration::from_millis(config.ha.failure_timeout_ms),
                Instant::from_micros(now_micros),
            ),
            peer_portals: config
                .nvme
                .peer_portals
                .iter()
                .map(|(address, _)| Ipv4Address::from_octets(*address))
                .collect(),
            peer_list: None,
            lists_received: 0,
            lists_dropped: 0,
            last_drop: None,
            own: ConnectionList {
                sender: me,
                boot,
                sequence: 0,
                entries: Vec::new(),
            },
            next_report_ms: 0,
            next_check_ms: 0,
            fingerprint: (0, 0),
            next_decision_micros: 0,
            claimed: Vec::new(),
            claim_announcement: None,
            own_addresses: OwnAddresses::new(config),
            announced_own: false,
            tickles_sent: 0,
        }
    }

    pub fn peer(&self) -> NodeId {
        self.me.peer()
    }

    /// The front-end NIC's link came back: announce this node's addresses
    /// (the peer may hold them).
    pub fn front_end_link_up(&mut self, now_micros: u64) {
        self.decision
            .announce_from(Instant::from_micros(now_micros));
    }

    /// The peer's portal addresses (`peer=`).
    pub fn peer_portals(&self) -> &[Ipv4Address] {
        &self.peer_portals
    }

    /// A connection-list datagram from a link. Anything wrong is dropped and
    /// counted.
    pub fn on_datagram(&mut self, bytes: &[u8]) {
        let verdict = match ConnectionList::parse(bytes) {
            Err(error) => Err(alloc::format!("{error}")),
            Ok(list) if list.sender != self.me.peer() => Err(String::from("not from the peer")),
            Ok(list) => match list.entries.iter().find(|e| {
                !self
                    .peer_portals
                    .contains(&Ipv4Address::from_octets(e.local_address))
            }) {
                Some(entry) => Err(alloc::format!(
                    "connection on {}, not a peer portal",
                    Ipv4Address::from_octets(entry.local_address)
                )),
                None => Ok(list),
            },
        };
        match verdict {
            Ok(list) => {
                self.lists_received += 1;
                if list.supersedes(self.peer_list.as_ref()) {
                    self.peer_list = Some(list);
                }
            }
            Err(why) => {
                self.lists_dropped += 1;
                log::debug!("takeover: connection list dropped: {why}");
                self.last_drop = Some(why);
            }
        }
    }

    /// One round: this node's report (returned, to go to the peer on every
    /// link), the decision, and what it asks for.
    pub fn poll<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        nvme: &NvmeService,
        console: &mut dyn Write,
        now_micros: u64,
        status: impl FnOnce() -> Status,
    ) -> (bool, Option<Vec<u8>>) {
        let now_ms = now_micros / 1000;
        let mut busy = self.own_addresses.watch(nets, console, now_micros);
        if !self.announced_own {
            self.announced_own = true;
            self.own_addresses.announce(now_micros);
        }
        let report = self.report(nets, nvme, now_ms);
        // New connections to a claimed address are refused: the host must
        // not build a second path to this node under the peer's name.
        for (nic, address) in &self.claimed {
            if nets[*nic].nic.abort_connections_on(*address) > 0 {
                log::info!("takeover: refused a connection to claimed {address}");
                busy = true;
            }
        }
        if now_micros < self.next_decision_micros {
            return (busy, report);
        }
        self.next_decision_micros = now_micros + DECIDE_MICROS;
        let status = status();
        let links = (status.links as usize).min(status.peer_heard.len());
        let view = PeerView {
            role: status.role,
            serving: status.serving,
            peer_heard: &status.peer_heard[..links],
            peer_host_path_lost: status.peer_host_path_lost,
            host_path_lost: status.host_path.is_some_and(|path| !path.can_serve),
        };
        let decision = self.decision.update(Instant::from_micros(now_micros), view);
        if decision.release {
            busy = true;
            let why = if status.role == tandem_ha::Role::Primary {
                "peer heard, front-end up"
            } else {
                "no longer primary"
            };
            self.claim_announcement = None;
            for (nic, address) in core::mem::take(&mut self.claimed) {
                nets[nic].nic.release_address(address);
                replay_neighbors(&mut nets[nic]);
                let _ = writeln!(
                    console,
                    "tandem: takeover release {address} on net{nic} ({why})"
                );
            }
        }
        if decision.claim {
            busy = true;
            self.claim(
                nets,
                console,
                if status.peer_host_path_lost {
                    "peer's front-end lost"
                } else {
                    "peer silent"
                },
            );
            self.claim_announcement = Some(Announcement::start(
                ArpSchedule::linux_default(),
                Instant::from_micros(now_micros),
            ));
        }
        if decision.announce_own {
            self.own_addresses.announce(now_micros);
        }
        busy |= self
            .own_addresses
            .decide(nets, console, now_micros, &status);
        if let Some(announcement) = self.claim_announcement.as_mut() {
            if announcement.poll(Instant::from_micros(now_micros)) {
                busy = true;
                self.announce_claimed(nets, now_micros);
            }
        }
        if let Some(round) = decision.round {
            busy = true;
            self.round(nets, now_micros, round);
        }
        (busy, report)
    }

    fn claim<Q: FrameQueues>(
        &mut self,
        nets: &mut [NetPort<Q>],
        console: &mut dyn Write,
        why: &str,
    ) {
        for address in self.peer_portals.clone() {
            let Some(nic) = nets.iter().position(|port| port.nic.in_subnet(address)) else {
                log::warn!("takeover: no NIC in the subnet of the peer's {address}");
                continue;
            };
            match nets[nic].nic.claim_address(address) {
                Ok(()) => {
                    replay_neighbors(&mut nets[nic]);
                    self.claimed.push((nic, address));
                    let connections = self.peer_connections_on(address).count();
                    let _ = writeln!(
                        console,
                        "tandem: takeover claim {address} on net{nic} ({why}), tickled {connections} connections"
                    );
                }
                Err(error) => {
                    let _ = writeln!(
                        console,
                        "tandem: takeover of {address} on net{nic} failed: {error}"
                    );
                }
            }
        }
    }

    fn peer_connections_on(&self, address: Ipv4Address) -> impl Iterator<Item = &ConnectionEntry> {
        self.peer_list
            .iter()
            .flat_map(|list| list.entries.iter())
            .filter(move |e| Ipv4Address::from_octets(e.local_address) == address)
    }

    /// The claimed addresses' announcement: a gratuitous ARP request and
    /// reply for each, and an ordinary ARP request from it to every host the
    /// peer reported on it (for hosts that drop gratuitous ARP; it also
    /// teaches this node and its smoltcp the host's MAC address).
    fn announce_claimed<Q: FrameQueues>(&mut self, nets: &mut [NetPort<Q>], now_micros: u64) {
        let now = NetInstant::from_micros(now_micros as i64);
        for (nic, address) in self.claimed.clone() {
            let port = &mut nets[nic];
            let mac = port.nic.device().mac_address();
            port.nic
                .send_frame(now, &frames::gratuitous_arp(mac, address));
            port.nic
                .send_frame(now, &frames::gratuitous_arp_reply(mac, address));
            let mut asked: Vec<Ipv4Address> = Vec::new();
            for entry in self.peer_connections_on(address) {
                let Some(next_hop) = next_hop(port, Ipv4Address::from_octets(entry.host_address))
                else {
                    continue;
                };
                if !asked.contains(&next_hop) {
                    asked.push(next_hop);
                    port.nic
                        .send_frame(now, &frames::arp_request(mac, address, next_hop));
                }
            }
        }
    }

    /// A tickle for every connection the peer reported on a claimed address
    /// whose host's MAC address this node knows (round 0 follows the first
    /// announcement at once: a host's answer goes where its neighbour entry
    /// now points); an ARP request to the others.
    fn round<Q: FrameQueues>(&mut self, nets: &mut [NetPort<Q>], now_micros: u64, round: usize) {
        let now = NetInstant::from_micros(now_micros as i64);
        let mut tickled = 0;
        let mut asked: Vec<Ipv4Address> = Vec::new();
        for (nic, address) in self.claimed.clone() {
            let port = &mut nets[nic];
            let mac = port.nic.device().mac_address();
            for entry in self.peer_connections_on(address) {
                let host = Ipv4Address::from_octets(entry.host_address);
                let Some(next_hop) = next_hop(port, host) else {
                    continue;
                };
                match port.nic.device().arp_neighbor(next_hop) {
                    Some(host_mac) => {
                        let from = Endpoint {
                            address,
                            port: entry.local_port,
                        };
                        let to = Endpoint {
                            address: host,
                            port: entry.host_port,
                        };
                        if port
                            .nic
                            .send_frame(now, &frames::tickle_ack(mac, host_mac, from, to))
                        {
                            tickled += 1;
                        }
                    }
                    None if !asked.contains(&next_hop) => {
                        asked.push(next_hop);
                        port.nic
                            .send_frame(now, &frames::arp_request(mac, address, next_hop));
                    }
                    None => {}
                }
            }
        }
        self.tickles_sent += tickled;
        log::info!(
            "takeover: round {round} (+{} ms): {tickled} tickles, {} ARP requests",
            ROUND_OFFSETS_MS[round.min(ROUND_OFFSETS_MS.len() - 1)],
            asked.len()
        );
    }

    /// This node's connection list, when it is due (changed, or the interval
    /// passed).
    fn report<Q: FrameQueues>(
        &mut self,
        nets: &[NetPort<Q>],
        nvme: &NvmeService,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let fingerprint = nvme.connections_fingerprint();
        if now_ms < self.next_check_ms && fingerprint == self.fingerprint {
            return None;
        }
        self.fingerprint = fingerprint;
        self.next_check_ms = now_ms + REPORT_CHECK_MILLIS;
        let claimed: Vec<Ipv4Address> = self.claimed.iter().map(|(_, address)| *address).collect();
        let mut entries: Vec<ConnectionEntry> = nvme
            .host_connections(nets)
            .into_iter()
            .filter_map(|(local, host)| {
                let (local_address, host_address) = (ipv4(local.addr)?, ipv4(host.addr)?);
                (!claimed.contains(&local_address)).then_some(ConnectionEntry {
                    local_address: local_address.octets(),
                    local_port: local.port,
                    host_port: host.port,
                    host_address: host_address.octets(),
                })
            })
            .collect();
        entries.sort_unstable();
        entries.truncate(MAX_ENTRIES);
        let changed = entries != self.own.entries;
        if !changed && now_ms < self.next_report_ms {
            return None;
        }
        if changed {
            self.own.entries = entries;
            self.own.sequence = self.own.sequence.wrapping_add(1);
        }
        self.next_report_ms = now_ms + REPORT_INTERVAL_MILLIS;
        Some(self.own.emit())
    }

    /// Lines for `status`.
    pub fn status_text(&self, now_micros: u64) -> String {
        let mut text = String::from("takeover:");
        if self.claimed.is_empty() {
            text.push_str(" claimed none");
        }
        let since = self.decision.claimed_at().map(|at| {
            Instant::from_micros(now_micros)
                .saturating_since(at)
                .as_millis()
        });
        for (nic, address) in &self.claimed {
            let _ = write!(
                text,
                " claimed {address} on net{nic} for {} ms",
                since.unwrap_or(0)
            );
        }
        let _ = writeln!(
            text,
            "; peer reported {} connections; reporting {}; lists received {} dropped {}{}; tickles sent {}",
            self.peer_list.as_ref().map_or(0, |list| list.entries.len()),
            self.own.entries.len(),
            self.lists_received,
            self.lists_dropped,
            self.last_drop
                .as_ref()
                .map(|why| alloc::format!(" (last: {why})"))
                .unwrap_or_default(),
            self.tickles_sent
        );
        text.push_str(&self.own_addresses.status_text());
        text.push('\n');
        text
    }
}

/// The next hop towards `host` from a NIC: the host on its subnet, else its
/// gateway.
fn next_hop<Q: FrameQueues>(port: &NetPort<Q>, host: Ipv4Address) -> Option<Ipv4Address> {
    if port.nic.in_subnet(host) {
        Some(host)
    } else {
        port.nic.gateway()
    }
}

/// smoltcp forgot its neighbours with the address change: tell it again.
fn replay_neighbors<Q: FrameQueues>(port: &mut NetPort<Q>) {
    if let Some(own) = port.nic.address() {
        port.nic.device_mut().replay_neighbors(own.address());
    }
}
