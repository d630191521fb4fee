//! One network interface: a device, its smoltcp interface, its sockets and
//! its addressing (static or DHCP).

use core::fmt;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::dhcpv4;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// How a NIC gets its IPv4 address (the `netN=` command-line key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicAddressing {
    Dhcp,
    Static {
        address: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
    },
}

impl fmt::Display for NicAddressing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicAddressing::Dhcp => f.write_str("dhcp"),
            NicAddressing::Static {
                address,
                gateway: None,
            } => write!(f, "{address}"),
            NicAddressing::Static {
                address,
                gateway: Some(gateway),
            } => {
                write!(f, "{address},gw={gateway}")
            }
        }
    }
}

/// Something that changed on a NIC during [`Nic::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicEvent {
    AddressAcquired {
        address: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
    },
    AddressLost,
}

/// Why [`Nic::claim_address`] refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// The NIC has no address of its own (yet).
    Unaddressed,
    /// The address is not in the NIC's subnet.
    OtherSubnet,
    /// The address is the NIC's own.
    Own,
    /// The interface holds as many addresses as smoltcp allows
    /// (`IFACE_MAX_ADDR_COUNT`, 2 by default: its own and one claimed).
    Full,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClaimError::Unaddressed => "the NIC has no address",
            ClaimError::OtherSubnet => "not in the NIC's subnet",
            ClaimError::Own => "the NIC's own address",
            ClaimError::Full => "the interface holds no more addresses",
        })
    }
}

/// A NIC with its interface and sockets.
pub struct Nic<D: Device> {
    name: &'static str,
    device: D,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    addressing: NicAddressing,
    address: Option<Ipv4Cidr>,
    gateway: Option<Ipv4Address>,
    /// Addresses taken over from a failed peer, besides the NIC's own.
    claimed: alloc::vec::Vec<Ipv4Cidr>,
}

impl<D: Device> Nic<D> {
    /// Brings up an interface on `device` with the given addressing.
    pub fn new(
        name: &'static str,
        mut device: D,
        mac: [u8; 6],
        addressing: NicAddressing,
        now: Instant,
    ) -> Self {
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let iface = Interface::new(config, &mut device, now);
        let mut nic = Self {
            name,
            device,
            iface,
            sockets: SocketSet::new(alloc::vec::Vec::new()),
            dhcp: None,
            addressing,
            address: None,
            gateway: None,
            claimed: alloc::vec::Vec::new(),
        };
        match addressing {
            NicAddressing::Dhcp => {
                let handle = nic.sockets.add(dhcpv4::Socket::new());
                nic.dhcp = Some(handle);
            }
            NicAddressing::Static { address, gateway } => nic.set_address(address, gateway),
        }
        nic
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn addressing(&self) -> NicAddressing {
        self.addressing
    }

    /// The current IPv4 address, if the NIC has one (always for static ones).
    pub fn address(&self) -> Option<Ipv4Cidr> {
        self.address
    }

    pub fn gateway(&self) -> Option<Ipv4Address> {
        self.gateway
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// Starts an outgoing TCP connection from this interface.
    pub fn connect(
        &mut self,
        mut socket: smoltcp::socket::tcp::Socket<'static>,
        remote: smoltcp::wire::IpEndpoint,
        local: smoltcp::wire::IpEndpoint,
    ) -> Result<SocketHandle, smoltcp::socket::tcp::ConnectError> {
        socket.connect(self.iface.context(), remote, local)?;
        Ok(self.sockets.add(socket))
    }

    fn set_address(&mut self, address: Ipv4Cidr, gateway: Option<Ipv4Address>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            // Capacity is at least one address; a single push cannot fail.
            let _ = addrs.push(IpCidr::Ipv4(address));
        });
        // Claimed addresses stay (after the own one, so that smoltcp keeps
        // choosing the own one as the source of outgoing traffic) while they
        // are in the new subnet.
        self.claimed.retain(|claimed| {
            address.contains_addr(&claimed.address()) && claimed.address() != address.address()
        });
        let claimed = self.claimed.clone();
        self.iface.update_ip_addrs(|addrs| {
            for claimed in claimed {
                let _ = addrs.push(IpCidr::Ipv4(claimed));
            }
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(gateway) = gateway {
            let _ = routes.add_default_ipv4_route(gateway);
        }
        self.address = Some(address);
        self.gateway = gateway;
    }

    fn clear_address(&mut self) {
        self.iface.update_ip_addrs(|addrs| addrs.clear());
        self.claimed.clear();
        self.iface.routes_mut().remove_default_ipv4_route();
        self.address = None;
        self.gateway = None;
    }

    /// Whether `address` is in this NIC's subnet (and not its own address).
    pub fn in_subnet(&self, address: Ipv4Address) -> bool {
        self.address
            .is_some_and(|own| own.contains_addr(&address) && own.address() != address)
    }

    /// Answers for `address` too (ARP, TCP, ICMP), besides the NIC's own:
    /// the takeover of a failed peer's address. The address must be in the
    /// NIC's subnet.
    pub fn claim_address(&mut self, address: Ipv4Address) -> Result<(), ClaimError> {
        let own = self.address.ok_or(ClaimError::Unaddressed)?;
        if own.address() == address {
            return Err(ClaimError::Own);
        }
        if !own.contains_addr(&address) {
            return Err(ClaimError::OtherSubnet);
        }
        let cidr = Ipv4Cidr::new(address, own.prefix_len());
        if self.claimed.contains(&cidr) {
            return Ok(());
        }
        let mut full = false;
        self.iface
            .update_ip_addrs(|addrs| full = addrs.push(IpCidr::Ipv4(cidr)).is_err());
        if full {
            return Err(ClaimError::Full);
        }
        self.claimed.push(cidr);
        Ok(())
    }

    /// Stops answering for a claimed address and resets every TCP
    /// connection on it. Returns whether it was claimed.
    pub fn release_address(&mut self, address: Ipv4Address) -> bool {
        let before = self.claimed.len();
        self.claimed.retain(|claimed| claimed.address() != address);
        if self.claimed.len() == before {
            return false;
        }
        self.iface.update_ip_addrs(|addrs| {
            addrs.retain(|cidr| *cidr != IpCidr::Ipv4(Ipv4Cidr::new(address, cidr.prefix_len())))
        });
        self.abort_connections_on(address);
        true
    }

    /// The addresses claimed with [`Nic::claim_address`].
    pub fn claimed_addresses(&self) -> &[Ipv4Cidr] {
        &self.claimed
    }

    /// Resets (RST) every TCP socket whose local address is `address`, in
    /// whatever state past LISTEN. Returns how many.
    pub fn abort_connections_on(&mut self, address: Ipv4Address) -> usize {
        let mut aborted = 0;
        for (_, socket) in self.sockets.iter_mut() {
            let smoltcp::socket::Socket::Tcp(socket) = socket else {
                continue;
            };
            let on_address = socket
                .local_endpoint()
                .is_some_and(|local| local.addr == smoltcp::wire::IpAddress::Ipv4(address));
            if on_address
                && !matches!(
                    socket.state(),
                    smoltcp::socket::tcp::State::Closed | smoltcp::socket::tcp::State::Listen
                )
            {
                socket.abort();
                aborted += 1;
            }
        }
        aborted
    }

    /// Sends a frame built outside smoltcp (see [`crate::frames`]). False if
    /// the device has no room for it now.
    pub fn send_frame(&mut self, now: Instant, frame: &[u8]) -> bool {
        use smoltcp::phy::TxToken;
        match self.device.transmit(now) {
            Some(token) => {
                token.consume(frame.len(), |buffer| buffer.copy_from_slice(frame));
                true
            }
            None => false,
        }
    }

    /// Moves packets between the device and the sockets. Returns whether
    /// anything happened and what changed about the address.
    pub fn poll(&mut self, now: Instant) -> (bool, Option<NicEvent>) {
        let activity = self.iface.poll(now, &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged;
        let mut event = None;
        if let Some(handle) = self.dhcp {
            let dhcp_event = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                None => None,
                Some(dhcpv4::Event::Configured(config)) => Some((config.address, config.router)),
                Some(dhcpv4::Event::Deconfigured) => {
                    Some((Ipv4Cidr::new(Ipv4Address::UNSPECIFIED, 0), None))
                }
            };
            match dhcp_event {
                Some((address, _)) if address.address().is_unspecified() => {
                    // smoltcp reports "deconfigured" when it (re)starts
                    // discovery too; only a lost address is news.
                    if self.address.take().is_some() {
                        self.clear_address();
                        event = Some(NicEvent::AddressLost);
                    }
                }
                Some((address, gateway)) => {
                    self.set_address(address, gateway);
                    event = Some(NicEvent::AddressAcquired { address, gateway });
                }
                None => {}
            }
        }
        (activity || event.is_some(), event)
    }

    /// How long until the interface needs polling again without new packets.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }
}

#[cfg(test)]
mod tests {
    //! What smoltcp does with the frames a takeover provokes: the host's
    //! answer to a tickle (an ACK for a connection this stack never had)
    //! gets an RST whose sequence number is that ACK's acknowledgment number
    //! (smoltcp 0.14 `Socket::rst_reply`; a listening socket does not take
    //! segments with ACK set), and a connection accepted on a claimed address
    //! is reset by [`Nic::abort_connections_on`].
    use super::*;
    use crate::frames;
    use alloc::collections::VecDeque;
    use alloc::vec::Vec;
    use smoltcp::phy::{DeviceCapabilities, Medium, RxToken, TxToken};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet, TcpControl, TcpPacket};

    #[derive(Default)]
    struct Wire {
        incoming: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
    }

    struct Rx(Vec<u8>);
    struct Tx<'a>(&'a mut Vec<Vec<u8>>);

    impl RxToken for Rx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    impl TxToken for Tx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut frame = alloc::vec![0u8; len];
            let result = f(&mut frame);
            self.0.push(frame);
            result
        }
    }

    impl Device for Wire {
        type RxToken<'a> = Rx;
        type TxToken<'a> = Tx<'a>;
        fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
            let frame = self.incoming.pop_front()?;
            Some((Rx(frame), Tx(&mut self.sent)))
        }
        fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
            Some(Tx(&mut self.sent))
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut caps = DeviceCapabilities::default();
            caps.medium = Medium::Ethernet;
            caps.max_transmission_unit = 1514;
            caps
        }
    }

    const OURS: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const HOST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 20];

    fn ip(d: u8) -> Ipv4Address {
        Ipv4Address::new(10, 79, 0, d)
    }

    fn nic() -> Nic<Wire> {
        let addressing = NicAddressing::Static {
            address: Ipv4Cidr::new(ip(2), 24),
            gateway: None,
        };
        Nic::new(
            "net2",
            Wire::default(),
            OURS,
            addressing,
            Instant::from_millis(0),
        )
    }

    /// A TCP segment from the host (10.79.0.20:`host_port`) to `to`:4420.
    fn from_host(
        to: Ipv4Address,
        host_port: u16,
        control: TcpControl,
        seq: u32,
        ack: Option<u32>,
    ) -> Vec<u8> {
        let host = frames::Endpoint {
            address: ip(20),
            port: host_port,
        };
        frames::tcp_segment(
            HOST_MAC,
            OURS,
            host,
            frames::Endpoint {
                address: to,
                port: 4420,
            },
            control,
            seq,
            ack,
        )
    }

    /// A NIC with a socket listening on 4420, as the NVMe service has, and
    /// `claimed` claimed; smoltcp knows the host from its ARP request.
    fn listening_nic(claimed: Ipv4Address) -> Nic<Wire> {
        let mut nic = nic();
        let mut listener = tcp::Socket::new(
            tcp::SocketBuffer::new(alloc::vec![0; 1024]),
            tcp::SocketBuffer::new(alloc::vec![0; 1024]),
        );
        listener.listen(4420).unwrap();
        nic.sockets_mut().add(listener);
        nic.claim_address(claimed).unwrap();
        poll(&mut nic, frames::arp_request(HOST_MAC, ip(20), claimed));
        nic.device_mut().sent.clear();
        nic
    }

    /// TCP segments sent: (source address, flags RST/SYN/ACK, seq).
    fn sent_segments(nic: &mut Nic<Wire>) -> Vec<(Ipv4Address, bool, bool, bool, u32)> {
        core::mem::take(&mut nic.device_mut().sent)
            .into_iter()
            .filter_map(|frame| {
                let ethernet = EthernetFrame::new_checked(&frame[..]).ok()?;
                if ethernet.ethertype() != EthernetProtocol::Ipv4 {
                    return None;
                }
                let packet = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
                let segment = TcpPacket::new_checked(packet.payload()).ok()?;
                Some((
                    packet.src_addr(),
                    segment.rst(),
                    segment.syn(),
                    segment.ack(),
                    segment.seq_number().0 as u32,
                ))
            })
            .collect()
    }

    fn poll(nic: &mut Nic<Wire>, frame: Vec<u8>) {
        nic.device_mut().incoming.push_back(frame);
        nic.poll(Instant::from_millis(10));
    }

    #[test]
    fn claims_are_bounded_and_checked() {
        let mut nic = nic();
        assert_eq!(nic.claim_address(ip(2)), Err(ClaimError::Own));
        assert_eq!(
            nic.claim_address(Ipv4Address::new(10, 80, 0, 1)),
            Err(ClaimError::OtherSubnet)
        );
        assert_eq!(nic.claim_address(ip(1)), Ok(()));
        assert_eq!(
            nic.claim_address(ip(1)),
            Ok(()),
            "claiming twice is one claim"
        );
        // smoltcp's default IFACE_MAX_ADDR_COUNT is 2: the own address and one claimed.
        assert_eq!(nic.claim_address(ip(3)), Err(ClaimError::Full));
        assert_eq!(nic.claimed_addresses(), &[Ipv4Cidr::new(ip(1), 24)]);
        assert!(nic.release_address(ip(1)));
        assert!(!nic.release_address(ip(1)));
        assert!(nic.claimed_addresses().is_empty());
        assert_eq!(nic.address(), Some(Ipv4Cidr::new(ip(2), 24)));
    }

    #[test]
    fn the_host_s_answer_to_a_tickle_is_reset_on_a_claimed_address_only() {
        let mut nic = listening_nic(ip(1));
        // The host's ACK with the real numbers: RST with seq = its ack number.
        poll(
            &mut nic,
            from_host(ip(1), 40000, TcpControl::None, 1_000_000, Some(77_777)),
        );
        assert_eq!(
            sent_segments(&mut nic),
            [(ip(1), true, false, false, 77_777)]
        );
        // Released: the address is not ours any more and nothing answers.
        nic.release_address(ip(1));
        poll(
            &mut nic,
            from_host(ip(1), 40000, TcpControl::None, 1_000_000, Some(77_777)),
        );
        assert!(sent_segments(&mut nic).is_empty());
    }

    #[test]
    fn connections_accepted_on_a_claimed_address_are_aborted() {
        let mut nic = listening_nic(ip(1));
        poll(
            &mut nic,
            from_host(ip(1), 40001, TcpControl::Syn, 5000, None),
        );
        let sent = sent_segments(&mut nic);
        assert!(
            matches!(sent[..], [(address, false, true, true, _)] if address == ip(1)),
            "SYN-ACK: {sent:?}"
        );
        assert_eq!(
            nic.abort_connections_on(ip(2)),
            0,
            "nothing on the own address"
        );
        assert_eq!(nic.abort_connections_on(ip(1)), 1);
        nic.poll(Instant::from_millis(20));
        let sent = sent_segments(&mut nic);
        assert!(
            matches!(sent[..], [(address, true, false, _, _)] if address == ip(1)),
            "RST: {sent:?}"
        );
    }
}
