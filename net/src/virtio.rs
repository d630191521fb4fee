//! A smoltcp [`Device`] over a virtio-drivers [`VirtIONet`].

use alloc::rc::Rc;
use core::cell::{Cell, RefCell};

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::Hal;
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::Transport;

/// Descriptors per virtqueue.
pub const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a full Ethernet frame plus the virtio-net header.
pub const RX_BUFFER_LEN: usize = 2048;
const MTU: usize = 1514;

/// Packet and byte counters of one NIC, readable while the NIC is in use.
#[derive(Debug, Default)]
pub struct NicCounters {
    pub rx_packets: Cell<u64>,
    pub rx_bytes: Cell<u64>,
    pub tx_packets: Cell<u64>,
    pub tx_bytes: Cell<u64>,
    pub rx_errors: Cell<u64>,
    pub tx_errors: Cell<u64>,
}

fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get().wrapping_add(by));
}

/// A virtio-net device usable as a smoltcp [`Device`].
pub struct VirtioNic<H: Hal, T: Transport> {
    net: Rc<RefCell<VirtIONet<H, T, QUEUE_SIZE>>>,
    counters: Rc<NicCounters>,
    mac: [u8; 6],
}

impl<H: Hal, T: Transport> VirtioNic<H, T> {
    /// Negotiates with the device and fills its receive queue.
    pub fn new(transport: T) -> Result<Self, virtio_drivers::Error> {
        let net = VirtIONet::<H, T, QUEUE_SIZE>::new(transport, RX_BUFFER_LEN)?;
        let mac = net.mac_address();
        Ok(Self { net: Rc::new(RefCell::new(net)), counters: Rc::default(), mac })
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    pub fn counters(&self) -> Rc<NicCounters> {
        self.counters.clone()
    }

    /// Acknowledges a pending interrupt; true if the device raised one.
    pub fn ack_interrupt(&mut self) -> bool {
        !self.net.borrow_mut().ack_interrupt().is_empty()
    }

    /// True if a received frame is waiting.
    pub fn has_rx(&self) -> bool {
        self.net.borrow().can_recv()
    }
}

impl<H: Hal, T: Transport> Device for VirtioNic<H, T> {
    type RxToken<'a>
        = VirtioRxToken<H, T>
    where
        Self: 'a;
    type TxToken<'a>
        = VirtioTxToken<H, T>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let mut net = self.net.borrow_mut();
        match net.receive() {
            Ok(buffer) => Some((
                VirtioRxToken { net: self.net.clone(), buffer, counters: self.counters.clone() },
                VirtioTxToken { net: self.net.clone(), counters: self.counters.clone() },
            )),
            Err(virtio_drivers::Error::NotReady) => None,
            Err(error) => {
                bump(&self.counters.rx_errors, 1);
                log::warn!("virtio-net receive failed: {error:?}");
                None
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.net.borrow().can_send() {
            Some(VirtioTxToken { net: self.net.clone(), counters: self.counters.clone() })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = None;
        caps.medium = Medium::Ethernet;
        caps
    }
}

pub struct VirtioRxToken<H: Hal, T: Transport> {
    net: Rc<RefCell<VirtIONet<H, T, QUEUE_SIZE>>>,
    buffer: RxBuffer,
    counters: Rc<NicCounters>,
}

impl<H: Hal, T: Transport> RxToken for VirtioRxToken<H, T> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let packet = self.buffer.packet();
        bump(&self.counters.rx_packets, 1);
        bump(&self.counters.rx_bytes, packet.len() as u64);
        let result = f(packet);
        if let Err(error) = self.net.borrow_mut().recycle_rx_buffer(self.buffer) {
            bump(&self.counters.rx_errors, 1);
            log::warn!("virtio-net could not recycle a receive buffer: {error:?}");
        }
        result
    }
}

pub struct VirtioTxToken<H: Hal, T: Transport> {
    net: Rc<RefCell<VirtIONet<H, T, QUEUE_SIZE>>>,
    counters: Rc<NicCounters>,
}

impl<H: Hal, T: Transport> TxToken for VirtioTxToken<H, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut net = self.net.borrow_mut();
        let mut buffer = net.new_tx_buffer(len);
        let result = f(buffer.packet_mut());
        match net.send(buffer) {
            Ok(()) => {
                bump(&self.counters.tx_packets, 1);
                bump(&self.counters.tx_bytes, len as u64);
            }
            Err(error) => {
                bump(&self.counters.tx_errors, 1);
                log::warn!("virtio-net send failed: {error:?}");
            }
        }
        result
    }
}
