//! virtio-net frame queues without waiting: frames to send are queued on the
//! transmit virtqueue and the device is told once per batch (virtio's event
//! index suppresses the notifications it does not need), sent buffers are
//! reclaimed later; received frames are lent out and posted again.
//!
//! virtio-drivers' non-blocking calls require a buffer to stay put, untouched,
//! while the device owns it: every such buffer is a heap allocation held here
//! by the token the device returns with it, until the device gives it back.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use tandem_net::{FrameError, FrameQueues, MAX_FRAME_LEN, ReceivedFrame};
use virtio_drivers::device::net::VirtIONetRaw;

use super::dma::KernelHal;
use super::pci::SharedTransport;

/// Descriptors per virtqueue (QEMU's virtio-net offers 256 per queue): a
/// 128 KiB read is ~90 frames, and the host's bursts fill the receive queue.
pub const QUEUE_SIZE: usize = 256;
/// A full Ethernet frame (no VLAN tag) and the virtio-net header.
const BUFFER_LEN: usize = 2048;

pub struct NetQueues {
    raw: VirtIONetRaw<KernelHal, SharedTransport, QUEUE_SIZE>,
    header_len: usize,
    /// Receive buffers the device holds, by token.
    receiving: Vec<Option<Box<[u8]>>>,
    /// Frames the device is sending: buffer and the length handed over, by token.
    sending: Vec<Option<(Box<[u8]>, usize)>>,
    /// Transmit buffers ready for reuse (allocated on demand, up to the queue size).
    free: Vec<Box<[u8]>>,
    /// The buffer lent out by `transmit_buffer`, header already written.
    filling: Option<Box<[u8]>>,
}

fn buffer() -> Box<[u8]> {
    vec![0u8; BUFFER_LEN].into_boxed_slice()
}

impl NetQueues {
    /// Negotiates with the device and fills its receive queue.
    pub fn new(transport: SharedTransport) -> Result<Self, virtio_drivers::Error> {
        let raw = VirtIONetRaw::<KernelHal, SharedTransport, QUEUE_SIZE>::new(transport)?;
        let mut scratch = [0u8; 32];
        let header_len = raw.fill_buffer_header(&mut scratch)?;
        let mut queues = Self {
            raw,
            header_len,
            receiving: (0..QUEUE_SIZE).map(|_| None).collect(),
            sending: (0..QUEUE_SIZE).map(|_| None).collect(),
            free: Vec::new(),
            filling: None,
        };
        for _ in 0..QUEUE_SIZE {
            queues.post_receive(buffer())?;
        }
        Ok(queues)
    }

    fn post_receive(&mut self, mut buffer: Box<[u8]>) -> Result<(), virtio_drivers::Error> {
        // SAFETY: the buffer is a heap allocation that moves into
        // `receiving[token]` and is neither touched nor freed until the
        // device returns that token (`take_received`).
        let token = unsafe { self.raw.receive_begin(&mut buffer)? };
        match self.receiving.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some(buffer);
                Ok(())
            }
            // The queue handed out a token it already holds: a driver bug.
            // Leaking the buffer keeps the device from writing freed memory.
            _ => {
                core::mem::forget(buffer);
                Err(virtio_drivers::Error::WrongToken)
            }
        }
    }

    /// Takes back what the device finished sending.
    fn reclaim_sent(&mut self) -> Result<(), FrameError> {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((buffer, len)) = self.sending.get_mut(usize::from(token)).and_then(Option::take) else {
                return Err(FrameError::Device);
            };
            // SAFETY: the same buffer and length that started this token.
            let done = unsafe { self.raw.transmit_complete(token, &buffer[..len]) };
            if done.is_err() {
                // The device still owns it; never reuse or free it.
                core::mem::forget(buffer);
                return Err(FrameError::Device);
            }
            self.free.push(buffer);
        }
        Ok(())
    }
}

impl FrameQueues for NetQueues {
    fn mac_address(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    fn ack_interrupt(&mut self) -> bool {
        !self.raw.ack_interrupt().is_empty()
    }

    fn has_received(&self) -> bool {
        self.raw.poll_receive().is_some()
    }

    fn take_received(&mut self) -> Option<Result<ReceivedFrame, FrameError>> {
        let token = self.raw.poll_receive()?;
        let Some(mut buffer) = self.receiving.get_mut(usize::from(token)).and_then(Option::take) else {
            return Some(Err(FrameError::Device));
        };
        // SAFETY: the same buffer that started this token.
        match unsafe { self.raw.receive_complete(token, &mut buffer) } {
            Ok((header_len, frame_len)) if header_len + frame_len <= buffer.len() => {
                Some(Ok(ReceivedFrame::new(buffer, header_len, frame_len)))
            }
            Ok(_) => {
                // The device is done with it; a bad length only loses the frame.
                let _ = self.post_receive(buffer);
                Some(Err(FrameError::Device))
            }
            Err(_) => {
                core::mem::forget(buffer);
                Some(Err(FrameError::Device))
            }
        }
    }

    fn recycle(&mut self, frame: ReceivedFrame) -> Result<(), FrameError> {
        self.post_receive(frame.into_buffer()).map_err(|_| FrameError::Device)
    }

    fn can_transmit(&mut self) -> bool {
        // A reclaim error leaves the queue as full as it was.
        let _ = self.reclaim_sent();
        self.raw.can_send()
    }

    fn transmit_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > MAX_FRAME_LEN || !self.can_transmit() {
            return None;
        }
        let mut buffer = match self.filling.take().or_else(|| self.free.pop()) {
            Some(buffer) => buffer,
            None => buffer(),
        };
        // The header is all zeroes but for `num_buffers`, written here.
        self.raw.fill_buffer_header(&mut buffer).ok()?;
        let header_len = self.header_len;
        let filling = self.filling.insert(buffer);
        filling.get_mut(header_len..header_len + len)
    }

    fn transmit(&mut self, len: usize) -> Result<(), FrameError> {
        let Some(buffer) = self.filling.take() else { return Err(FrameError::Device) };
        let total = self.header_len + len;
        if total > buffer.len() {
            self.free.push(buffer);
            return Err(FrameError::Device);
        }
        // SAFETY: the buffer is a heap allocation that moves into
        // `sending[token]` and is neither touched nor freed until the device
        // returns that token (`reclaim_sent`).
        match unsafe { self.raw.transmit_begin(&buffer[..total]) } {
            Ok(token) => match self.sending.get_mut(usize::from(token)) {
                Some(slot @ None) => {
                    *slot = Some((buffer, total));
                    Ok(())
                }
                _ => {
                    core::mem::forget(buffer);
                    Err(FrameError::Device)
                }
            },
            Err(_) => {
                self.free.push(buffer);
                Err(FrameError::QueueFull)
            }
        }
    }
}
