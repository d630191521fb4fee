//! Fake devices for the glue's tests, in the style of `tandem_net`'s own:
//! NICs whose frames go over in-memory segments, and disks that are byte
//! vectors whose requests finish when the test lets them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use tandem_net::{FrameError, FrameQueues, MAX_FRAME_LEN, ReceivedFrame};

use crate::block::{BlockQueue, DiskError, DiskOp, DiskResult, SECTOR, Tag};

/// One NIC's side of a segment.
#[derive(Default)]
pub struct Wire {
    pub segment: usize,
    /// Plugged in: frames go out and come in.
    pub up: bool,
    pub incoming: VecDeque<Vec<u8>>,
    pub outgoing: Vec<Vec<u8>>,
    /// Every frame this NIC sent while plugged in, in order.
    pub sent: Vec<Vec<u8>>,
}

pub type WireRef = Rc<RefCell<Wire>>;

/// A NIC's frame queues over a [`Wire`].
pub struct FakeNic {
    mac: [u8; 6],
    wire: WireRef,
    filling: Vec<u8>,
}

impl FakeNic {
    pub fn new(mac: [u8; 6], wire: WireRef) -> Self {
        Self {
            mac,
            wire,
            filling: Vec::new(),
        }
    }
}

impl FrameQueues for FakeNic {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }
    fn ack_interrupt(&mut self) -> bool {
        false
    }
    fn has_received(&self) -> bool {
        !self.wire.borrow().incoming.is_empty()
    }
    fn take_received(&mut self) -> Option<Result<ReceivedFrame, FrameError>> {
        let frame = self.wire.borrow_mut().incoming.pop_front()?;
        let len = frame.len();
        Some(Ok(ReceivedFrame::new(frame.into_boxed_slice(), 0, len)))
    }
    fn recycle(&mut self, _frame: ReceivedFrame) -> Result<(), FrameError> {
        Ok(())
    }
    fn can_transmit(&mut self) -> bool {
        true
    }
    fn transmit_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > MAX_FRAME_LEN {
            return None;
        }
        self.filling = vec![0; len];
        Some(&mut self.filling)
    }
    fn transmit(&mut self, len: usize) -> Result<(), FrameError> {
        let mut frame = core::mem::take(&mut self.filling);
        frame.truncate(len);
        self.wire.borrow_mut().outgoing.push(frame);
        Ok(())
    }
}

/// Segments of wires: every frame a plugged-in NIC sends reaches every
/// other plugged-in NIC of its segment (a hub; smoltcp drops what is not
/// addressed to it).
#[derive(Default)]
pub struct Network {
    wires: Vec<WireRef>,
}

impl Network {
    pub fn wire(&mut self, segment: usize) -> WireRef {
        let wire = Rc::new(RefCell::new(Wire {
            segment,
            up: true,
            ..Wire::default()
        }));
        self.wires.push(wire.clone());
        wire
    }

    /// Carries the frames sent since the last call. Returns whether any moved.
    pub fn deliver(&self) -> bool {
        let mut moved = false;
        for (index, wire) in self.wires.iter().enumerate() {
            let (segment, frames) = {
                let mut wire = wire.borrow_mut();
                let frames = core::mem::take(&mut wire.outgoing);
                if !wire.up {
                    continue;
                }
                wire.sent.extend(frames.iter().cloned());
                (wire.segment, frames)
            };
            for frame in frames {
                moved = true;
                for (other_index, other) in self.wires.iter().enumerate() {
                    let mut other = other.borrow_mut();
                    if other_index != index && other.up && other.segment == segment {
                        other.incoming.push_back(frame.clone());
                    }
                }
            }
        }
        moved
    }
}

/// What a fake disk does with the requests it is given.
#[derive(Default)]
pub struct DiskState {
    pub bytes: Vec<u8>,
    /// Requests not yet finished, in submission order.
    pub queued: Vec<(Tag, DiskOp)>,
    /// Finish nothing until released.
    pub held: bool,
    /// Finish the queued requests last first.
    pub reverse: bool,
    /// Fail reads / writes with an I/O error.
    pub fail_reads: bool,
    pub fail_writes: bool,
    /// Writes done (with their byte offset and length).
    pub writes: Vec<(u64, usize)>,
}

/// A disk: a byte vector behind the block-queue trait.
#[derive(Clone)]
pub struct FakeDisk(pub Rc<RefCell<DiskState>>);

impl FakeDisk {
    pub fn new(bytes: usize) -> Self {
        Self(Rc::new(RefCell::new(DiskState {
            bytes: vec![0; bytes],
            ..DiskState::default()
        })))
    }

    pub fn hold(&self, held: bool) {
        self.0.borrow_mut().held = held;
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        self.0.borrow().bytes[offset as usize..offset as usize + len].to_vec()
    }

    pub fn queued(&self) -> usize {
        self.0.borrow().queued.len()
    }
}

impl DiskState {
    fn execute(&mut self, op: DiskOp) -> DiskResult {
        let at = |sector: u64| (sector * SECTOR) as usize;
        match op {
            DiskOp::Read { .. } if self.fail_reads => DiskResult::Failed(DiskError::IoError),
            DiskOp::Read { sector, bytes } => {
                DiskResult::ReadData(self.bytes[at(sector)..at(sector) + bytes].to_vec())
            }
            DiskOp::Write { .. } | DiskOp::Zero { .. } if self.fail_writes => {
                DiskResult::Failed(DiskError::IoError)
            }
            DiskOp::Write { sector, data, .. } => {
                self.bytes[at(sector)..at(sector) + data.len()].copy_from_slice(&data[..]);
                self.writes.push((sector * SECTOR, data.len()));
                DiskResult::Done
            }
            DiskOp::Zero {
                sector, sectors, ..
            } => {
                self.bytes[at(sector)..at(sector + sectors)].fill(0);
                DiskResult::Done
            }
            DiskOp::Discard { .. } | DiskOp::Flush => DiskResult::Done,
        }
    }
}

impl BlockQueue for FakeDisk {
    fn sectors(&self) -> u64 {
        self.0.borrow().bytes.len() as u64 / SECTOR
    }

    fn submit(&mut self, tag: Tag, op: DiskOp) {
        self.0.borrow_mut().queued.push((tag, op));
    }

    fn poll(&mut self) -> Vec<(Tag, DiskResult)> {
        let mut state = self.0.borrow_mut();
        if state.held {
            return Vec::new();
        }
        let mut queued = core::mem::take(&mut state.queued);
        if state.reverse {
            queued.reverse();
        }
        queued
            .into_iter()
            .map(|(tag, op)| (tag, state.execute(op)))
            .collect()
    }

    fn run_now(&mut self, op: DiskOp) -> DiskResult {
        self.0.borrow_mut().execute(op)
    }
}
