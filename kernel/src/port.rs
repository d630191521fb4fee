//! A NIC as the glue sees it: its smoltcp interface over the NIC's frame
//! queues (virtio-net's in the image, a fake in the tests), and the status
//! port served on it.

use alloc::vec::Vec;

use tandem_net::smoltcp::iface::SocketHandle;
use tandem_net::{FrameDevice, FrameQueues, Listener, Nic};

pub struct NetPort<Q: FrameQueues> {
    pub nic: Nic<FrameDevice<Q>>,
    /// The status port's listener, if it is served.
    pub status: Option<Listener>,
    /// Status connections being answered (ours to remove once closed).
    pub status_connections: Vec<SocketHandle>,
    /// When the neighbours learned from ARP were last told to smoltcp.
    pub neighbors_replayed_micros: u64,
}

impl<Q: FrameQueues> NetPort<Q> {
    pub fn new(nic: Nic<FrameDevice<Q>>, status: Option<Listener>) -> Self {
        Self {
            nic,
            status,
            status_connections: Vec::new(),
            neighbors_replayed_micros: 0,
        }
    }
}
