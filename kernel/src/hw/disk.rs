//! Asynchronous virtio-blk: many requests in flight, completed in whatever
//! order the device finishes them.
//!
//! virtio-drivers' non-blocking calls require the request header, data
//! buffer and status to stay put until completion; each in-flight request
//! owns them in a heap allocation that does not move while the device uses
//! it. Requests beyond the virtqueue's capacity wait in a FIFO. A flush is a
//! barrier: it waits until nothing is in flight, then flushes (virtio-drivers
//! only offers a blocking flush, which must not share the queue with other
//! requests).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};

use super::dma::KernelHal;
use super::pci::SharedTransport;

/// Largest single virtio-blk transfer the kernel issues.
pub const MAX_TRANSFER_BYTES: usize = 128 * 1024;

/// Caller's tag for a request; returned with its completion.
pub type Tag = u64;

pub enum DiskOp {
    Read { sector: u64, bytes: usize },
    Write { sector: u64, data: Vec<u8>, flush_after: bool },
    /// Zero `sectors` sectors (written as zeroes: the device's write-zeroes
    /// command is not reachable through virtio-drivers).
    Zero { sector: u64, sectors: u64 },
    Flush,
}

#[derive(Debug)]
pub enum DiskResult {
    Done,
    ReadData(Vec<u8>),
    Failed(virtio_drivers::Error),
}

struct InFlight {
    tag: Tag,
    request: BlkReq,
    response: BlkResp,
    buffer: Vec<u8>,
    write: bool,
    flush_after: bool,
}

struct Zeroing {
    tag: Tag,
    next_sector: u64,
    end_sector: u64,
    outstanding: usize,
    failed: Option<virtio_drivers::Error>,
}

pub struct Disk {
    blk: VirtIOBlk<KernelHal, SharedTransport>,
    sectors: u64,
    read_only: bool,
    in_flight: Vec<(u16, Box<InFlight>)>,
    waiting: VecDeque<(Tag, DiskOp)>,
    zeroing: Option<Zeroing>,
    completed: Vec<(Tag, DiskResult)>,
    zeroes: Vec<u8>,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
}

const ZERO_TAG_BIT: Tag = 1 << 63;
/// Tag of the one synchronous durable write ([`Disk::write_durable_now`]).
const BARRIER_TAG: Tag = 1 << 62;

impl Disk {
    pub fn new(blk: VirtIOBlk<KernelHal, SharedTransport>) -> Self {
        let sectors = blk.capacity();
        let read_only = blk.readonly();
        Self {
            blk,
            sectors,
            read_only,
            in_flight: Vec::new(),
            waiting: VecDeque::new(),
            zeroing: None,
            completed: Vec::new(),
            zeroes: Vec::new(),
            reads: 0,
            writes: 0,
            flushes: 0,
        }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn ack_interrupt(&mut self) {
        self.blk.ack_interrupt();
    }

    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty() || !self.waiting.is_empty() || self.zeroing.is_some()
    }

    /// Queues an operation; its result comes back from [`Disk::poll`].
    pub fn submit(&mut self, tag: Tag, op: DiskOp) {
        self.waiting.push_back((tag, op));
    }

    /// Starts what fits, collects what finished.
    pub fn poll(&mut self) -> Vec<(Tag, DiskResult)> {
        self.collect_finished();
        self.start_waiting();
        self.collect_finished();
        core::mem::take(&mut self.completed)
    }

    fn queue_has_room(&self) -> bool {
        self.in_flight.len() < self.blk.virt_queue_size() as usize
    }

    fn start_waiting(&mut self) {
        loop {
            if let Some(zeroing) = self.zeroing.as_mut() {
                if zeroing.next_sector < zeroing.end_sector && self.in_flight.len() < self.blk.virt_queue_size() as usize {
                    let sectors = (zeroing.end_sector - zeroing.next_sector).min((MAX_TRANSFER_BYTES / SECTOR_SIZE) as u64);
                    let sector = zeroing.next_sector;
                    zeroing.next_sector += sectors;
                    zeroing.outstanding += 1;
                    let tag = zeroing.tag | ZERO_TAG_BIT;
                    if self.zeroes.len() < MAX_TRANSFER_BYTES {
                        self.zeroes = vec![0; MAX_TRANSFER_BYTES];
                    }
                    let data = self.zeroes[..sectors as usize * SECTOR_SIZE].to_vec();
                    self.start(tag, sector, data, true, false);
                    continue;
                }
                break;
            }
            let Some((_, op)) = self.waiting.front() else { break };
            match op {
                DiskOp::Flush if !self.in_flight.is_empty() => break,
                DiskOp::Flush => {
                    let Some((tag, _)) = self.waiting.pop_front() else { break };
                    self.flushes += 1;
                    let result = match self.blk.flush() {
                        Ok(()) => DiskResult::Done,
                        Err(error) => DiskResult::Failed(error),
                    };
                    self.completed.push((tag, result));
                }
                _ if !self.queue_has_room() => break,
                _ => {
                    let Some((tag, op)) = self.waiting.pop_front() else { break };
                    match op {
                        DiskOp::Read { sector, bytes } => self.start(tag, sector, vec![0; bytes], false, false),
                        DiskOp::Write { sector, data, flush_after } => self.start(tag, sector, data, true, flush_after),
                        DiskOp::Zero { sector, sectors } => {
                            self.zeroing =
                                Some(Zeroing { tag, next_sector: sector, end_sector: sector + sectors, outstanding: 0, failed: None });
                        }
                        DiskOp::Flush => {}
                    }
                }
            }
        }
    }

    fn start(&mut self, tag: Tag, sector: u64, buffer: Vec<u8>, write: bool, flush_after: bool) {
        let mut entry = Box::new(InFlight {
            tag,
            request: BlkReq::default(),
            response: BlkResp::default(),
            buffer,
            write,
            flush_after,
        });
        let InFlight { request, response, buffer, .. } = &mut *entry;
        // SAFETY: the request, buffer and response live in `entry`, a heap
        // allocation kept in `in_flight` untouched until the device returns
        // the token, and are passed again unchanged to the completion call.
        let started = unsafe {
            if write {
                self.blk.write_blocks_nb(sector as usize, request, buffer, response)
            } else {
                self.blk.read_blocks_nb(sector as usize, request, buffer, response)
            }
        };
        match started {
            Ok(token) => {
                if write {
                    self.writes += 1;
                } else {
                    self.reads += 1;
                }
                self.in_flight.push((token, entry));
            }
            Err(error) => self.finish(tag, DiskResult::Failed(error)),
        }
    }

    fn collect_finished(&mut self) {
        while let Some(token) = self.blk.peek_used() {
            let Some(position) = self.in_flight.iter().position(|(t, _)| *t == token) else {
                log::error!("virtio-blk returned unknown token {token}");
                return;
            };
            let (_, mut entry) = self.in_flight.swap_remove(position);
            let InFlight { request, response, buffer, write, .. } = &mut *entry;
            // SAFETY: the same request, buffer and response that started
            // this token are passed back.
            let result = unsafe {
                if *write {
                    self.blk.complete_write_blocks(token, request, buffer, response)
                } else {
                    self.blk.complete_read_blocks(token, request, buffer, response)
                }
            };
            let outcome = match result {
                Ok(()) if entry.write && entry.flush_after => {
                    // Forced unit access: durable before it completes.
                    self.waiting.push_front((entry.tag, DiskOp::Flush));
                    continue;
                }
                Ok(()) if entry.write => DiskResult::Done,
                Ok(()) => DiskResult::ReadData(core::mem::take(&mut entry.buffer)),
                Err(error) => DiskResult::Failed(error),
            };
            self.finish(entry.tag, outcome);
        }
    }

    fn finish(&mut self, tag: Tag, outcome: DiskResult) {
        if tag & ZERO_TAG_BIT == 0 {
            self.completed.push((tag, outcome));
            return;
        }
        let Some(zeroing) = self.zeroing.as_mut() else { return };
        zeroing.outstanding = zeroing.outstanding.saturating_sub(1);
        if let DiskResult::Failed(error) = outcome {
            zeroing.failed.get_or_insert(error);
            zeroing.next_sector = zeroing.end_sector;
        }
        if zeroing.outstanding == 0 && zeroing.next_sector >= zeroing.end_sector {
            let result = match zeroing.failed {
                Some(error) => DiskResult::Failed(error),
                None => DiskResult::Done,
            };
            let tag = zeroing.tag;
            self.zeroing = None;
            self.completed.push((tag, result));
        }
    }

    /// Writes and flushes `data` at `sector` before returning, while other
    /// requests go on (their completions are kept for the next `poll`): the
    /// HA metadata barrier.
    pub fn write_durable_now(&mut self, sector: u64, data: Vec<u8>) -> Result<(), virtio_drivers::Error> {
        self.waiting.push_front((BARRIER_TAG, DiskOp::Write { sector, data, flush_after: true }));
        loop {
            self.collect_finished();
            self.start_waiting();
            if let Some(position) = self.completed.iter().position(|(tag, _)| *tag == BARRIER_TAG) {
                let (_, result) = self.completed.remove(position);
                return match result {
                    DiskResult::Failed(error) => Err(error),
                    _ => Ok(()),
                };
            }
            core::hint::spin_loop();
        }
    }

    /// Blocking read for console diagnostics; only when the disk is idle.
    pub fn read_now(&mut self, sector: u64, buffer: &mut [u8]) -> Result<(), virtio_drivers::Error> {
        if self.busy() {
            return Err(virtio_drivers::Error::NotReady);
        }
        self.blk.read_blocks(sector as usize, buffer)
    }

    /// Blocking write for console diagnostics; only when the disk is idle.
    pub fn write_now(&mut self, sector: u64, buffer: &[u8]) -> Result<(), virtio_drivers::Error> {
        if self.busy() {
            return Err(virtio_drivers::Error::NotReady);
        }
        self.blk.write_blocks(sector as usize, buffer)
    }

    pub fn flush_now(&mut self) -> Result<(), virtio_drivers::Error> {
        if self.busy() {
            return Err(virtio_drivers::Error::NotReady);
        }
        self.blk.flush()
    }
}
