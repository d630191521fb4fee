//! Our virtio-blk driver: many requests in flight on one virtqueue,
//! completed in whatever order the device finishes them, with flush,
//! discard and write-zeroes as requests like any other.
//!
//! Every request the caller submits is a *job*; a job becomes one or more
//! virtio requests (*parts*: a transfer larger than the device accepts in
//! one request, a zero range beyond its write-zeroes limit). Each virtio
//! request owns its header, data and status in a heap allocation that stays
//! put, untouched, until the device returns its token. Jobs start their
//! parts in submission order; parts of different jobs overlap freely.
//!
//! Flush never waits for the queue to drain: a flush covers every write the
//! device completed before the flush was handed to it (virtio 1.2 §5.2.6.1),
//! which is exactly what an NVMe Flush promises for the writes completed
//! before it was submitted. A write with `flush_after` (forced unit access)
//! completes once its data is written and a flush handed to the device after
//! that completed; the FUA writes that complete together share one flush.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::ops::Range;

use tandem_kernel::virtio::{
    BLK_S_OK, BLK_S_UNSUPP, BlkConfig, BlkFeatures, BlkRangeSegment, BlkRequestHeader,
    BlkRequestType, DeviceFeatures, StallWatch,
};
use virtio_drivers::Error;
use virtio_drivers::config::read_config;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

use super::dma::KernelHal;
use super::pci::SharedTransport;
use super::virtio::{NotifyGate, negotiate};

use tandem_kernel::block::{BlockQueue, SECTOR};
pub use tandem_kernel::block::{DiskOp, DiskResult, SectorRange, Tag, WriteData};

const SECTOR_SIZE: usize = SECTOR as usize;
/// Largest zero-fill write when the device lacks write-zeroes.
const ZERO_FILL_BYTES: usize = 128 * 1024;
/// Largest single transfer handed to the device when it states no limit.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
const QUEUE: u16 = 0;

/// Negotiated features as `status` names them.
const FEATURE_NAMES: [(BlkFeatures, &str); 9] = [
    (BlkFeatures::SIZE_MAX, "size-max"),
    (BlkFeatures::SEG_MAX, "seg-max"),
    (BlkFeatures::RO, "ro"),
    (BlkFeatures::BLK_SIZE, "blk-size"),
    (BlkFeatures::FLUSH, "flush"),
    (BlkFeatures::DISCARD, "discard"),
    (BlkFeatures::WRITE_ZEROES, "write-zeroes"),
    (BlkFeatures::RING_INDIRECT_DESC, "indirect"),
    (BlkFeatures::RING_EVENT_IDX, "event-idx"),
];

// Request types and statuses (virtio 1.2 §5.2.6).

/// What the device offered and what was negotiated.
#[derive(Debug, Clone, Copy)]
pub struct DiskLimits {
    pub features: BlkFeatures,
    pub queue_size: usize,
    /// Bytes per segment; `None` without SIZE_MAX.
    pub size_max: Option<u32>,
    /// Segments per request; `None` without SEG_MAX.
    pub seg_max: Option<u32>,
    pub blk_size: u32,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: bool,
}

impl DiskLimits {
    fn has(&self, feature: BlkFeatures) -> bool {
        self.features.contains(feature)
    }

    /// Data bytes one virtio request may carry, a whole number of sectors.
    fn request_bytes(&self) -> usize {
        let segments = self
            .seg_max
            .unwrap_or(1)
            .clamp(1, self.queue_size as u32 - 2) as usize;
        let bytes = match self.size_max {
            Some(size_max) => (size_max as usize).saturating_mul(segments),
            None => MAX_REQUEST_BYTES,
        };
        (bytes.min(MAX_REQUEST_BYTES) / SECTOR_SIZE).max(1) * SECTOR_SIZE
    }

    /// Bytes per data segment.
    fn segment_bytes(&self) -> usize {
        match self.size_max {
            Some(size_max) => (size_max as usize).max(SECTOR_SIZE),
            None => usize::MAX,
        }
    }

    fn discard_usable(&self) -> bool {
        self.has(BlkFeatures::DISCARD) && self.max_discard_sectors != 0 && self.max_discard_seg != 0
    }

    fn write_zeroes_usable(&self) -> bool {
        self.has(BlkFeatures::WRITE_ZEROES)
            && self.max_write_zeroes_sectors != 0
            && self.max_write_zeroes_seg != 0
    }

    /// Sectors per discard request: the device's bound, cut to its alignment.
    fn discard_chunk(&self) -> u64 {
        let max = u64::from(self.max_discard_sectors);
        let alignment = u64::from(self.discard_sector_alignment);
        if alignment > 1 && max >= alignment {
            max / alignment * alignment
        } else {
            max
        }
    }
}

/// The virtqueue at the largest size the device allows (QEMU: 256).
// One per disk, made once: the unused room of a smaller ring costs nothing.
#[allow(clippy::large_enum_variant)]
enum Ring {
    Large(VirtQueue<KernelHal, 256>),
    Medium(VirtQueue<KernelHal, 128>),
    Small(VirtQueue<KernelHal, 16>),
}

macro_rules! on_ring {
    ($ring:expr, $queue:ident => $body:expr) => {
        match $ring {
            Ring::Large($queue) => $body,
            Ring::Medium($queue) => $body,
            Ring::Small($queue) => $body,
        }
    };
}

impl Ring {
    fn new(
        transport: &mut SharedTransport,
        indirect: bool,
        event_idx: bool,
    ) -> Result<Self, Error> {
        let max = transport.max_queue_size(QUEUE);
        if max >= 256 {
            Ok(Ring::Large(VirtQueue::new(
                transport, QUEUE, indirect, event_idx,
            )?))
        } else if max >= 128 {
            Ok(Ring::Medium(VirtQueue::new(
                transport, QUEUE, indirect, event_idx,
            )?))
        } else {
            Ok(Ring::Small(VirtQueue::new(
                transport, QUEUE, indirect, event_idx,
            )?))
        }
    }

    fn size(&self) -> usize {
        match self {
            Ring::Large(_) => 256,
            Ring::Medium(_) => 128,
            Ring::Small(_) => 16,
        }
    }
}

type JobId = u64;

/// Who a virtio request works for.
enum Owner {
    /// A part of a job; `offset`: where a read part's data goes in the job's buffer.
    Part { job: JobId, offset: usize },
    /// The flush that makes these FUA jobs' writes durable.
    Durability(Vec<JobId>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// One virtio request in flight; boxed so that nothing the device reads or
/// writes moves.
struct Request {
    kind: Kind,
    header: [u8; BlkRequestHeader::LEN],
    /// The discard / write-zeroes segment.
    segment: [u8; BlkRangeSegment::LEN],
    /// A read's buffer, which the device writes.
    data: Vec<u8>,
    /// What a write hands the device, which only reads it.
    written: Option<SharedSlice>,
    status: [u8; 1],
    owner: Owner,
}

/// A piece of a buffer that others share (and may read meanwhile); the
/// reference keeps it allocated, unmoved and unchanged while the device
/// reads it.
struct SharedSlice {
    data: WriteData,
    range: Range<usize>,
}

impl SharedSlice {
    fn bytes(&self) -> &[u8] {
        &self.data[self.range.clone()]
    }
}

impl Request {
    fn new(
        kind: Kind,
        request_type: BlkRequestType,
        sector: u64,
        data: Vec<u8>,
        owner: Owner,
    ) -> Box<Self> {
        let header = BlkRequestHeader {
            request_type,
            sector,
        }
        .to_bytes();
        Box::new(Self {
            kind,
            header,
            segment: [0; BlkRangeSegment::LEN],
            data,
            written: None,
            status: [0xff],
            owner,
        })
    }

    fn write(sector: u64, written: SharedSlice, owner: Owner) -> Box<Self> {
        let mut request = Self::new(Kind::Write, BlkRequestType::Out, sector, Vec::new(), owner);
        request.written = Some(written);
        request
    }

    /// Hands the request to the device.
    ///
    /// # Safety
    /// `self` must stay allocated, unmoved and untouched until [`Request::complete`]
    /// is called with the returned token.
    unsafe fn add<const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<KernelHal, SIZE>,
        segment_bytes: usize,
    ) -> Result<u16, Error> {
        let Request {
            kind,
            header,
            segment,
            data,
            written,
            status,
            ..
        } = self;
        // SAFETY: the caller keeps every buffer in place until `complete`.
        unsafe {
            match kind {
                Kind::Flush => queue.add(&[&header[..]], &mut [&mut status[..]]),
                Kind::Discard | Kind::WriteZeroes => {
                    queue.add(&[&header[..], &segment[..]], &mut [&mut status[..]])
                }
                Kind::Write => {
                    let mut inputs: Vec<&[u8]> = vec![&header[..]];
                    inputs.extend(
                        written
                            .as_ref()
                            .map_or(&[][..], SharedSlice::bytes)
                            .chunks(segment_bytes),
                    );
                    queue.add(&inputs, &mut [&mut status[..]])
                }
                Kind::Read => {
                    let mut outputs: Vec<&mut [u8]> = data.chunks_mut(segment_bytes).collect();
                    outputs.push(&mut status[..]);
                    queue.add(&[&header[..]], &mut outputs)
                }
            }
        }
    }

    /// Takes the request back from the device.
    ///
    /// # Safety
    /// `token` must be the one [`Request::add`] returned for this request.
    unsafe fn complete<const SIZE: usize>(
        &mut self,
        queue: &mut VirtQueue<KernelHal, SIZE>,
        token: u16,
        segment_bytes: usize,
    ) -> Result<u32, Error> {
        let Request {
            kind,
            header,
            segment,
            data,
            written,
            status,
            ..
        } = self;
        // SAFETY: the same buffers that started this token.
        unsafe {
            match kind {
                Kind::Flush => queue.pop_used(token, &[&header[..]], &mut [&mut status[..]]),
                Kind::Discard | Kind::WriteZeroes => {
                    queue.pop_used(token, &[&header[..], &segment[..]], &mut [&mut status[..]])
                }
                Kind::Write => {
                    let mut inputs: Vec<&[u8]> = vec![&header[..]];
                    inputs.extend(
                        written
                            .as_ref()
                            .map_or(&[][..], SharedSlice::bytes)
                            .chunks(segment_bytes),
                    );
                    queue.pop_used(token, &inputs, &mut [&mut status[..]])
                }
                Kind::Read => {
                    let mut outputs: Vec<&mut [u8]> = data.chunks_mut(segment_bytes).collect();
                    outputs.push(&mut status[..]);
                    queue.pop_used(token, &[&header[..]], &mut outputs)
                }
            }
        }
    }
}

/// What a job still has to hand to the device.
enum Work {
    Read {
        sector: u64,
        bytes: usize,
        next: usize,
    },
    Write {
        sector: u64,
        data: WriteData,
        next: usize,
    },
    WriteZeroes {
        next: u64,
        end: u64,
        unmap: bool,
    },
    ZeroFill {
        next: u64,
        end: u64,
    },
    Discard {
        ranges: VecDeque<SectorRange>,
    },
    Flush,
    Issued,
}

struct Job {
    tag: Tag,
    work: Work,
    /// Virtio requests of this job in flight.
    outstanding: usize,
    failed: Option<Error>,
    /// A read's data (split reads are gathered here).
    read: Option<Vec<u8>>,
    flush_after: bool,
}

/// Requests handed to the device, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskCounters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub zeroes: u64,
    pub discards: u64,
    /// Zero-filled writes standing in for write-zeroes.
    pub zero_fills: u64,
    /// The most virtio requests in flight at once.
    pub max_in_flight: u64,
    /// Flushes the caller asked for, handed to the device while other
    /// requests were in flight (none if flush were a barrier).
    pub flush_overlaps: u64,
    /// Notifications sent to the device (a VM exit each when emulated).
    pub notifications: u64,
}

pub struct Disk {
    transport: SharedTransport,
    ring: Ring,
    limits: DiskLimits,
    sectors: u64,
    read_only: bool,
    /// Virtio requests the device holds, by token.
    in_flight: Vec<Option<Box<Request>>>,
    in_flight_count: usize,
    jobs: BTreeMap<JobId, Job>,
    /// Jobs with parts still to start, in submission order.
    starting: VecDeque<JobId>,
    /// FUA jobs whose writes completed and that wait for their flush.
    awaiting_flush: Vec<JobId>,
    next_job: JobId,
    completed: Vec<(Tag, DiskResult)>,
    /// Zeroes for the zero-filled writes, shared by all of them.
    zeroes: WriteData,
    /// Decides when the device is told of requests added.
    notifications: NotifyGate,
    /// Notices a device that holds requests and finishes none.
    watch: StallWatch,
    next_sync_tag: Tag,
    pub counters: DiskCounters,
}

/// Tags of the synchronous requests ([`Disk::write_durable_now`], the
/// console's) start here, clear of the callers' tags; each has its own, so
/// that a late completion of one given up on is never taken for another's.
const SYNC_TAG_BASE: Tag = 1 << 62;
/// How long a synchronous request may take before it is reported failed.
const SYNC_TIMEOUT_MICROS: u64 = 30_000_000;

fn status_error(status: u8) -> Error {
    if status == BLK_S_UNSUPP {
        Error::Unsupported
    } else {
        Error::IoError
    }
}

impl Disk {
    /// Negotiates with the device and sets up its request queue.
    pub fn new(mut transport: SharedTransport) -> Result<Self, Error> {
        let features: BlkFeatures = negotiate(&mut transport)?;
        let has = |feature: BlkFeatures| features.contains(feature);
        // The capacity is read in two 32-bit halves; the configuration
        // generation makes them agree.
        let sectors = transport.read_consistent(|| {
            let low: u32 = read_config!(transport, BlkConfig, capacity_low)?;
            let high: u32 = read_config!(transport, BlkConfig, capacity_high)?;
            Ok(u64::from(low) | u64::from(high) << 32)
        })?;
        let (max_discard_sectors, max_discard_seg, discard_sector_alignment) =
            if has(BlkFeatures::DISCARD) {
                (
                    read_config!(transport, BlkConfig, max_discard_sectors)?,
                    read_config!(transport, BlkConfig, max_discard_seg)?,
                    read_config!(transport, BlkConfig, discard_sector_alignment)?,
                )
            } else {
                (0, 0, 0)
            };
        let (max_write_zeroes_sectors, max_write_zeroes_seg, write_zeroes_may_unmap) =
            if has(BlkFeatures::WRITE_ZEROES) {
                let may_unmap: u8 = read_config!(transport, BlkConfig, write_zeroes_may_unmap)?;
                (
                    read_config!(transport, BlkConfig, max_write_zeroes_sectors)?,
                    read_config!(transport, BlkConfig, max_write_zeroes_seg)?,
                    may_unmap != 0,
                )
            } else {
                (0, 0, false)
            };
        let size_max = if has(BlkFeatures::SIZE_MAX) {
            Some(read_config!(transport, BlkConfig, size_max)?).filter(|s| *s != 0)
        } else {
            None
        };
        let seg_max = if has(BlkFeatures::SEG_MAX) {
            Some(read_config!(transport, BlkConfig, seg_max)?).filter(|s| *s != 0)
        } else {
            None
        };
        let blk_size = if has(BlkFeatures::BLK_SIZE) {
            read_config!(transport, BlkConfig, blk_size)?
        } else {
            SECTOR_SIZE as u32
        };
        let ring = Ring::new(
            &mut transport,
            features.indirect_descriptors(),
            features.event_index(),
        )?;
        let notifications = NotifyGate::new(&transport, QUEUE, features.event_index());
        transport.finish_init();
        let queue_size = ring.size();
        let limits = DiskLimits {
            features,
            queue_size,
            size_max,
            seg_max,
            blk_size,
            max_discard_sectors,
            max_discard_seg,
            discard_sector_alignment,
            max_write_zeroes_sectors,
            max_write_zeroes_seg,
            write_zeroes_may_unmap,
        };
        log::debug!("virtio-blk {limits:?}");
        Ok(Self {
            transport,
            ring,
            limits,
            sectors,
            read_only: has(BlkFeatures::RO),
            in_flight: (0..queue_size).map(|_| None).collect(),
            in_flight_count: 0,
            jobs: BTreeMap::new(),
            starting: VecDeque::new(),
            awaiting_flush: Vec::new(),
            next_job: 0,
            completed: Vec::new(),
            zeroes: Rc::new(Vec::new()),
            notifications,
            watch: StallWatch::default(),
            next_sync_tag: 0,
            counters: DiskCounters::default(),
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The negotiated features and limits, and the counters: for `status`.
    pub fn describe(&self) -> String {
        let l = &self.limits;
        let mut text = String::new();
        let names: Vec<&str> = FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| l.has(*bit))
            .map(|(_, name)| *name)
            .collect();
        let _ = write!(
            text,
            "queue={} features={} blk_size={}",
            l.queue_size,
            names.join(","),
            l.blk_size
        );
        if let Some(seg_max) = l.seg_max {
            let _ = write!(text, " seg_max={seg_max}");
        }
        if let Some(size_max) = l.size_max {
            let _ = write!(text, " size_max={size_max}");
        }
        if l.has(BlkFeatures::DISCARD) {
            let _ = write!(
                text,
                " discard_max={}x{} discard_align={}",
                l.max_discard_sectors, l.max_discard_seg, l.discard_sector_alignment
            );
        }
        if l.has(BlkFeatures::WRITE_ZEROES) {
            let _ = write!(
                text,
                " write_zeroes_max={}x{}{}",
                l.max_write_zeroes_sectors,
                l.max_write_zeroes_seg,
                if l.write_zeroes_may_unmap {
                    " may_unmap"
                } else {
                    ""
                }
            );
        }
        let c = &self.counters;
        let _ = write!(
            text,
            "\n  reads={} writes={} flushes={} zeroes={} discards={} zero_fills={} in_flight={} max_in_flight={} flush_overlaps={} notifies={}",
            c.reads,
            c.writes,
            c.flushes,
            c.zeroes,
            c.discards,
            c.zero_fills,
            self.in_flight_count,
            c.max_in_flight,
            c.flush_overlaps,
            c.notifications
        );
        text
    }

    pub fn ack_interrupt(&mut self) {
        self.transport.ack_interrupt();
    }

    pub fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Queues an operation; its result comes back from [`Disk::poll`].
    pub fn submit(&mut self, tag: Tag, op: DiskOp) {
        self.submit_job(tag, op, false);
    }

    fn submit_job(&mut self, tag: Tag, op: DiskOp, first: bool) {
        let mut flush_after = false;
        let work = match op {
            DiskOp::Read { sector, bytes } => Work::Read {
                sector,
                bytes,
                next: 0,
            },
            DiskOp::Write {
                sector,
                data,
                flush_after: fua,
            } => {
                // Without a write cache to flush, every write is durable.
                flush_after = fua && self.limits.has(BlkFeatures::FLUSH);
                Work::Write {
                    sector,
                    data,
                    next: 0,
                }
            }
            DiskOp::Zero {
                sector,
                sectors,
                unmap,
            } if self.limits.write_zeroes_usable() => Work::WriteZeroes {
                next: sector,
                end: sector + sectors,
                unmap: unmap && self.limits.write_zeroes_may_unmap,
            },
            DiskOp::Zero {
                sector, sectors, ..
            } => Work::ZeroFill {
                next: sector,
                end: sector + sectors,
            },
            DiskOp::Discard { ranges } if self.limits.discard_usable() => Work::Discard {
                ranges: ranges.into_iter().filter(|r| r.sectors != 0).collect(),
            },
            // Discarded content is unspecified: keeping it is a discard.
            DiskOp::Discard { .. } => Work::Issued,
            DiskOp::Flush if self.limits.has(BlkFeatures::FLUSH) => Work::Flush,
            DiskOp::Flush => Work::Issued,
        };
        let id = self.next_job;
        self.next_job += 1;
        let empty = matches!(&work, Work::Discard { ranges } if ranges.is_empty())
            || matches!(work, Work::WriteZeroes { next, end, .. } | Work::ZeroFill { next, end } if next >= end);
        if matches!(work, Work::Issued) || empty {
            self.completed.push((tag, DiskResult::Done));
            return;
        }
        self.jobs.insert(
            id,
            Job {
                tag,
                work,
                outstanding: 0,
                failed: None,
                read: None,
                flush_after,
            },
        );
        if first {
            self.starting.push_front(id);
        } else {
            self.starting.push_back(id);
        }
    }

    /// Starts what fits, collects what finished.
    pub fn poll(&mut self) -> Vec<(Tag, DiskResult)> {
        self.step();
        core::mem::take(&mut self.completed)
    }

    fn step(&mut self) {
        let before = self.in_flight_count;
        self.collect_finished();
        let finished = self.in_flight_count < before;
        if self.watch.check(
            super::clock::now_micros(),
            self.in_flight_count > 0,
            finished,
        ) {
            log::warn!(
                "virtio-blk: the device finished none of {} requests for a second; notified it again ({} times so far)",
                self.in_flight_count,
                self.watch.renotified()
            );
            self.transport.notify(QUEUE);
            self.counters.notifications += 1;
        }
        self.start_waiting();
        self.collect_finished();
        if !self.awaiting_flush.is_empty() {
            self.start_waiting();
        }
    }

    fn has_room(&self, descriptors: usize) -> bool {
        let indirect = self.limits.features.indirect_descriptors();
        let free = on_ring!(&self.ring, queue => queue.available_desc());
        if indirect {
            self.in_flight_count < self.limits.queue_size && free > 0
        } else {
            free >= descriptors
        }
    }

    /// Hands a request to the device. On failure the request comes back.
    fn start(&mut self, mut request: Box<Request>) -> Result<(), (Box<Request>, Error)> {
        let segment_bytes = self.limits.segment_bytes();
        // SAFETY: the request is a heap allocation that moves into
        // `in_flight[token]` and is neither touched nor freed until the
        // device returns that token (`collect_finished`). A write's shared
        // buffer stays allocated through the request's reference, and
        // unchanged: an `Rc` gives no one a mutable borrow while shared.
        let added = on_ring!(&mut self.ring, queue => unsafe { request.add(queue, segment_bytes) });
        let token = match added {
            Ok(token) => token,
            Err(error) => return Err((request, error)),
        };
        self.notifications.added();
        if matches!(request.owner, Owner::Part { .. })
            && request.kind == Kind::Flush
            && self.in_flight_count > 0
        {
            self.counters.flush_overlaps += 1;
        }
        match request.kind {
            Kind::Read => self.counters.reads += 1,
            Kind::Write => self.counters.writes += 1,
            Kind::Flush => self.counters.flushes += 1,
            Kind::Discard => self.counters.discards += 1,
            Kind::WriteZeroes => self.counters.zeroes += 1,
        }
        match self.in_flight.get_mut(usize::from(token)) {
            Some(slot @ None) => {
                *slot = Some(request);
                self.in_flight_count += 1;
                self.counters.max_in_flight =
                    self.counters.max_in_flight.max(self.in_flight_count as u64);
                Ok(())
            }
            // The queue handed out a token it already holds: a driver bug.
            // Leaking the request keeps the device from writing freed memory.
            _ => {
                Box::leak(request);
                log::error!("virtio-blk: token {token} handed out twice");
                Ok(())
            }
        }
    }

    /// The next virtio request of job `id`, or `None` when it has none left.
    fn next_part(&mut self, id: JobId) -> Option<Box<Request>> {
        let request_bytes = self.limits.request_bytes();
        let discard_chunk = self.limits.discard_chunk();
        let zeroes_chunk = u64::from(self.limits.max_write_zeroes_sectors);
        let job = self.jobs.get_mut(&id)?;
        let owner = |offset: usize| Owner::Part { job: id, offset };
        let (request, done) = match &mut job.work {
            Work::Issued => return None,
            Work::Flush => (
                Request::new(Kind::Flush, BlkRequestType::Flush, 0, Vec::new(), owner(0)),
                true,
            ),
            Work::Read {
                sector,
                bytes,
                next,
            } => {
                let len = (*bytes - *next).min(request_bytes);
                let part_sector = *sector + (*next / SECTOR_SIZE) as u64;
                let request = Request::new(
                    Kind::Read,
                    BlkRequestType::In,
                    part_sector,
                    vec![0; len],
                    owner(*next),
                );
                if len < *bytes && job.read.is_none() {
                    job.read = Some(vec![0; *bytes]);
                }
                *next += len;
                (request, *next >= *bytes)
            }
            Work::Write { sector, data, next } => {
                let len = (data.len() - *next).min(request_bytes);
                let part_sector = *sector + (*next / SECTOR_SIZE) as u64;
                let part = SharedSlice {
                    data: Rc::clone(data),
                    range: *next..*next + len,
                };
                *next += len;
                (
                    Request::write(part_sector, part, owner(0)),
                    *next >= data.len(),
                )
            }
            Work::WriteZeroes { next, end, unmap } => {
                let sectors = (*end - *next).min(zeroes_chunk);
                let mut request = Request::new(
                    Kind::WriteZeroes,
                    BlkRequestType::WriteZeroes,
                    0,
                    Vec::new(),
                    owner(0),
                );
                let flags = if *unmap { BlkRangeSegment::UNMAP } else { 0 };
                request.segment = BlkRangeSegment {
                    sector: *next,
                    sectors: sectors as u32,
                    flags,
                }
                .to_bytes();
                *next += sectors;
                (request, *next >= *end)
            }
            Work::ZeroFill { next, end } => {
                let sectors =
                    (*end - *next).min((ZERO_FILL_BYTES.min(request_bytes) / SECTOR_SIZE) as u64);
                let len = sectors as usize * SECTOR_SIZE;
                if self.zeroes.len() < len {
                    self.zeroes = Rc::new(vec![0; ZERO_FILL_BYTES]);
                }
                let request = Request::write(
                    *next,
                    SharedSlice {
                        data: Rc::clone(&self.zeroes),
                        range: 0..len,
                    },
                    owner(0),
                );
                self.counters.zero_fills += 1;
                *next += sectors;
                (request, *next >= *end)
            }
            Work::Discard { ranges } => {
                let Some(range) = ranges.front_mut() else {
                    job.work = Work::Issued;
                    return None;
                };
                let sectors = range.sectors.min(discard_chunk);
                let mut request = Request::new(
                    Kind::Discard,
                    BlkRequestType::Discard,
                    0,
                    Vec::new(),
                    owner(0),
                );
                request.segment = BlkRangeSegment {
                    sector: range.sector,
                    sectors: sectors as u32,
                    flags: 0,
                }
                .to_bytes();
                range.sector += sectors;
                range.sectors -= sectors;
                if range.sectors == 0 {
                    ranges.pop_front();
                }
                (request, ranges.is_empty())
            }
        };
        if done {
            job.work = Work::Issued;
        }
        job.outstanding += 1;
        Some(request)
    }

    fn start_waiting(&mut self) {
        let segment_bytes = self.limits.segment_bytes();
        // Durability first: those writes are done and wait for nothing else.
        if !self.awaiting_flush.is_empty() && self.has_room(2) {
            let jobs = core::mem::take(&mut self.awaiting_flush);
            let request = Request::new(
                Kind::Flush,
                BlkRequestType::Flush,
                0,
                Vec::new(),
                Owner::Durability(jobs),
            );
            if let Err((request, error)) = self.start(request)
                && let Owner::Durability(jobs) = request.owner
            {
                for id in jobs {
                    if let Some(job) = self.jobs.remove(&id) {
                        self.completed.push((job.tag, DiskResult::Failed(error)));
                    }
                }
            }
        }
        while let Some(&id) = self.starting.front() {
            let Some(job) = self.jobs.get(&id) else {
                self.starting.pop_front();
                continue;
            };
            let descriptors = match &job.work {
                Work::Issued => {
                    self.starting.pop_front();
                    continue;
                }
                Work::Read { bytes, next, .. } => {
                    2 + (*bytes - *next)
                        .min(self.limits.request_bytes())
                        .div_ceil(segment_bytes)
                }
                Work::Write { data, next, .. } => {
                    2 + (data.len() - *next)
                        .min(self.limits.request_bytes())
                        .div_ceil(segment_bytes)
                }
                Work::ZeroFill { .. } => 2 + ZERO_FILL_BYTES.div_ceil(segment_bytes),
                Work::Flush => 2,
                Work::WriteZeroes { .. } | Work::Discard { .. } => 3,
            };
            if !self.has_room(descriptors) {
                break;
            }
            let Some(request) = self.next_part(id) else {
                self.starting.pop_front();
                self.finish_if_done(id);
                continue;
            };
            if let Err((_, error)) = self.start(request) {
                // Nothing more of this job starts; it fails once its
                // started parts are back.
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.outstanding -= 1;
                    job.failed.get_or_insert(error);
                    job.work = Work::Issued;
                }
                self.starting.pop_front();
                self.finish_if_done(id);
            }
        }
        // Once for everything added: a batch that crosses the device's
        // event notifies once (the event index rule handles the wrap).
        let ring = &self.ring;
        if self
            .notifications
            .notify_due(|| on_ring!(ring, queue => queue.should_notify()))
        {
            self.transport.notify(QUEUE);
            self.counters.notifications += 1;
        }
    }

    fn collect_finished(&mut self) {
        let segment_bytes = self.limits.segment_bytes();
        while let Some(token) = on_ring!(&self.ring, queue => queue.peek_used()) {
            let Some(mut request) = self
                .in_flight
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                log::error!("virtio-blk returned unknown token {token}");
                return;
            };
            // SAFETY: the request that started this token.
            let popped = on_ring!(&mut self.ring, queue => unsafe { request.complete(queue, token, segment_bytes) });
            if let Err(error) = popped {
                // The device still owns it; never reuse or free it.
                log::error!("virtio-blk: token {token} not taken back: {error:?}");
                Box::leak(request);
                return;
            }
            self.in_flight_count -= 1;
            let status = request.status[0];
            let outcome = if status == BLK_S_OK {
                Ok(())
            } else {
                Err(status_error(status))
            };
            match core::mem::replace(&mut request.owner, Owner::Durability(Vec::new())) {
                Owner::Durability(jobs) => {
                    for id in jobs {
                        if let Some(job) = self.jobs.remove(&id) {
                            let result = match outcome {
                                Ok(()) => DiskResult::Done,
                                Err(error) => DiskResult::Failed(error),
                            };
                            self.completed.push((job.tag, result));
                        }
                    }
                }
                Owner::Part { job: id, offset } => {
                    let Some(job) = self.jobs.get_mut(&id) else {
                        continue;
                    };
                    job.outstanding -= 1;
                    match outcome {
                        Err(error) => {
                            job.failed.get_or_insert(error);
                            if !matches!(job.work, Work::Issued) {
                                job.work = Work::Issued;
                            }
                        }
                        Ok(()) if request.kind == Kind::Read => match job.read.as_mut() {
                            Some(buffer) => buffer[offset..offset + request.data.len()]
                                .copy_from_slice(&request.data),
                            None => job.read = Some(core::mem::take(&mut request.data)),
                        },
                        Ok(()) => {}
                    }
                    self.finish_if_done(id);
                }
            }
        }
    }

    /// Completes job `id` once all of it is issued and back.
    fn finish_if_done(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if job.outstanding != 0 || !matches!(job.work, Work::Issued) {
            return;
        }
        if job.failed.is_none() && job.flush_after {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.flush_after = false;
            }
            self.awaiting_flush.push(id);
            return;
        }
        let Some(mut job) = self.jobs.remove(&id) else {
            return;
        };
        let result = match job.failed {
            Some(error) => DiskResult::Failed(error),
            None => match job.read.take() {
                Some(data) => DiskResult::ReadData(data),
                None => DiskResult::Done,
            },
        };
        self.completed.push((job.tag, result));
    }

    /// Runs `op` ahead of everything waiting and returns its result, while
    /// other requests go on (their completions are kept for the next `poll`).
    /// A device that does not answer within [`SYNC_TIMEOUT_MICROS`] fails it.
    fn run_now(&mut self, op: DiskOp) -> DiskResult {
        let tag = SYNC_TAG_BASE + self.next_sync_tag;
        self.next_sync_tag += 1;
        self.submit_job(tag, op, true);
        let started = super::clock::now_micros();
        loop {
            if let Some(position) = self.completed.iter().position(|(t, _)| *t == tag) {
                return self.completed.remove(position).1;
            }
            if super::clock::now_micros().saturating_sub(started) > SYNC_TIMEOUT_MICROS {
                log::error!(
                    "virtio-blk: no answer in {} s",
                    SYNC_TIMEOUT_MICROS / 1_000_000
                );
                return DiskResult::Failed(Error::IoError);
            }
            self.step();
            core::hint::spin_loop();
        }
    }

    /// Blocking read for console diagnostics; only when the disk is idle.
    pub fn read_now(&mut self, sector: u64, buffer: &mut [u8]) -> Result<(), Error> {
        if self.busy() {
            return Err(Error::NotReady);
        }
        match self.run_now(DiskOp::Read {
            sector,
            bytes: buffer.len(),
        }) {
            DiskResult::ReadData(data) if data.len() == buffer.len() => {
                buffer.copy_from_slice(&data);
                Ok(())
            }
            DiskResult::Failed(error) => Err(error),
            _ => Err(Error::IoError),
        }
    }

    /// Blocking write for console diagnostics; only when the disk is idle.
    pub fn write_now(&mut self, sector: u64, buffer: &[u8]) -> Result<(), Error> {
        if self.busy() {
            return Err(Error::NotReady);
        }
        match self.run_now(DiskOp::Write {
            sector,
            data: Rc::new(buffer.to_vec()),
            flush_after: false,
        }) {
            DiskResult::Failed(error) => Err(error),
            _ => Ok(()),
        }
    }

    pub fn flush_now(&mut self) -> Result<(), Error> {
        if self.busy() {
            return Err(Error::NotReady);
        }
        match self.run_now(DiskOp::Flush) {
            DiskResult::Failed(error) => Err(error),
            _ => Ok(()),
        }
    }
}

impl BlockQueue for Disk {
    fn sectors(&self) -> u64 {
        Disk::sectors(self)
    }

    fn submit(&mut self, tag: Tag, op: DiskOp) {
        Disk::submit(self, tag, op)
    }

    fn poll(&mut self) -> Vec<(Tag, DiskResult)> {
        Disk::poll(self)
    }

    fn run_now(&mut self, op: DiskOp) -> DiskResult {
        Disk::run_now(self, op)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // The device must not use the buffers once they are freed.
        self.transport.queue_unset(QUEUE);
    }
}
