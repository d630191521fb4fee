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
    Static { address: Ipv4Cidr, gateway: Option<Ipv4Address> },
}

impl fmt::Display for NicAddressing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicAddressing::Dhcp => f.write_str("dhcp"),
            NicAddressing::Static { address, gateway: None } => write!(f, "{address}"),
            NicAddressing::Static { address, gateway: Some(gateway) } => {
                write!(f, "{address},gw={gateway}")
            }
        }
    }
}

/// Something that changed on a NIC during [`Nic::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicEvent {
    AddressAcquired { address: Ipv4Cidr, gateway: Option<Ipv4Address> },
    AddressLost,
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
}

impl<D: Device> Nic<D> {
    /// Brings up an interface on `device` with the given addressing.
    pub fn new(name: &'static str, mut device: D, mac: [u8; 6], addressing: NicAddressing, now: Instant) -> Self {
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
        self.iface.routes_mut().remove_default_ipv4_route();
        self.address = None;
        self.gateway = None;
    }

    /// Moves packets between the device and the sockets. Returns whether
    /// anything happened and what changed about the address.
    pub fn poll(&mut self, now: Instant) -> (bool, Option<NicEvent>) {
        let activity = self.iface.poll(now, &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged;
        let mut event = None;
        if let Some(handle) = self.dhcp {
            let dhcp_event = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                None => None,
                Some(dhcpv4::Event::Configured(config)) => Some((config.address, config.router)),
                Some(dhcpv4::Event::Deconfigured) => Some((Ipv4Cidr::new(Ipv4Address::UNSPECIFIED, 0), None)),
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
