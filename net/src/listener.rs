//! A TCP listening port that accepts many connections: smoltcp has no
//! accept(), so the listener keeps a few sockets in LISTEN (a backlog, so
//! that several hosts connecting in the same instant are all answered),
//! hands established ones to the caller, and opens fresh listening sockets
//! — up to a bound on live connections, so a flood of connections costs
//! bounded memory.
//!
//! An accepted socket belongs to the caller from then on: the caller removes
//! it from the socket set when done, and tells [`Listener::poll`] how many it
//! still holds.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// Sockets kept in LISTEN at once.
pub const BACKLOG: usize = 4;

pub struct Listener {
    port: u16,
    max_connections: usize,
    buffer_bytes: usize,
    listening: Vec<SocketHandle>,
    /// Connections past LISTEN but not yet established (not yet announced).
    handshaking: Vec<SocketHandle>,
}

impl Listener {
    /// `max_connections` live connections at most, each with `buffer_bytes`
    /// of receive and of transmit buffer.
    pub fn new(port: u16, max_connections: usize, buffer_bytes: usize) -> Self {
        Self {
            port,
            max_connections,
            buffer_bytes,
            listening: Vec::new(),
            handshaking: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Accepts: returns sockets that became established since the last call
    /// (now the caller's), and keeps up to [`BACKLOG`] sockets listening
    /// while the caller holds (`live`) fewer connections than the bound.
    pub fn poll(&mut self, sockets: &mut SocketSet<'static>, live: usize) -> Vec<SocketHandle> {
        let handshaking = &mut self.handshaking;
        self.listening.retain(|handle| {
            let socket = sockets.get::<tcp::Socket>(*handle);
            if socket.is_active() {
                handshaking.push(*handle);
                false
            } else if !socket.is_open() {
                // Listen failed or was reset: start over.
                sockets.remove(*handle);
                false
            } else {
                true
            }
        });
        let mut accepted = Vec::new();
        self.handshaking
            .retain(|handle| match sockets.get::<tcp::Socket>(*handle).state() {
                tcp::State::SynReceived => true,
                tcp::State::Established | tcp::State::CloseWait => {
                    accepted.push(*handle);
                    false
                }
                // Reset or abandoned during the handshake.
                _ => {
                    sockets.remove(*handle);
                    false
                }
            });
        while self.listening.len() < BACKLOG
            && live + accepted.len() + self.handshaking.len() + self.listening.len()
                < self.max_connections
        {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; self.buffer_bytes]),
                tcp::SocketBuffer::new(vec![0; self.buffer_bytes]),
            );
            if socket.listen(self.port).is_err() {
                break;
            }
            self.listening.push(sockets.add(socket));
        }
        accepted
    }
}
