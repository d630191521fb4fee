//! virtio without I/O, shared by the two drivers in `hw/` (virtio-blk in
//! `hw/disk.rs`, virtio-net in `hw/netdev.rs`): the feature bits each
//! negotiates and the rule that picks them from what the device offers, the
//! devices' configuration layouts, and the specification's notification rule
//! (the event index).
//!
//! The drivers do the register I/O (`hw/virtio.rs`); what is decided here is
//! tested on the host.

use core::fmt;
use core::ops::BitAnd;

use bitflags::{Flags, bitflags};
use virtio_drivers::config::ReadOnly;

/// Device-independent feature bits (virtio 1.2 §6).
const RING_INDIRECT_DESC: u64 = 1 << 28;
const RING_EVENT_IDX: u64 = 1 << 29;
const VERSION_1: u64 = 1 << 32;

bitflags! {
    /// virtio-blk feature bits tandem knows (virtio 1.2 §5.2.3), with the
    /// device-independent ones it uses (§6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct BlkFeatures: u64 {
        const SIZE_MAX = 1 << 1;
        const SEG_MAX = 1 << 2;
        const RO = 1 << 5;
        const BLK_SIZE = 1 << 6;
        const FLUSH = 1 << 9;
        const DISCARD = 1 << 13;
        const WRITE_ZEROES = 1 << 14;
        const RING_INDIRECT_DESC = RING_INDIRECT_DESC;
        const RING_EVENT_IDX = RING_EVENT_IDX;
        const VERSION_1 = VERSION_1;
    }
}

bitflags! {
    /// virtio-net feature bits tandem knows (virtio 1.2 §5.1.3), with the
    /// device-independent ones it uses (§6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NetFeatures: u64 {
        /// The device completes checksums of frames we send (needed for
        /// segmentation offload).
        const CSUM = 1 << 0;
        /// Received frames may come with their checksums unchecked.
        const GUEST_CSUM = 1 << 1;
        const MAC = 1 << 5;
        /// The device hands over received TCP segments larger than a frame.
        const GUEST_TSO4 = 1 << 7;
        /// The device cuts large TCP frames we send into segments.
        const HOST_TSO4 = 1 << 11;
        /// A received frame may span several receive buffers.
        const MRG_RXBUF = 1 << 15;
        const STATUS = 1 << 16;
        const RING_INDIRECT_DESC = RING_INDIRECT_DESC;
        const RING_EVENT_IDX = RING_EVENT_IDX;
        const VERSION_1 = VERSION_1;
    }
}

/// The features a driver negotiates, and its rules for picking them.
pub trait DeviceFeatures: Flags<Bits = u64> + Copy + BitAnd<Output = Self> + fmt::Debug {
    /// The device's name in messages.
    const DEVICE: &'static str;
    /// Everything the driver can use.
    const WANTED: Self;
    /// What it cannot work without.
    const REQUIRED: Self;

    /// Drops offered features whose prerequisites were not offered.
    fn consistent(self) -> Self {
        self
    }

    /// Descriptors may point at tables of descriptors.
    fn indirect_descriptors(self) -> bool {
        self.bits() & RING_INDIRECT_DESC != 0
    }

    /// Notifications both ways follow the event index (avail_event,
    /// used_event) instead of the rings' flags.
    fn event_index(self) -> bool {
        self.bits() & RING_EVENT_IDX != 0
    }
}

impl DeviceFeatures for BlkFeatures {
    const DEVICE: &'static str = "virtio-blk";
    const WANTED: Self = Self::all();
    // Only modern devices: their configuration is little-endian and their
    // queues are laid out as tandem's are.
    const REQUIRED: Self = Self::VERSION_1;
}

impl DeviceFeatures for NetFeatures {
    const DEVICE: &'static str = "virtio-net";
    const WANTED: Self = Self::all();
    const REQUIRED: Self = Self::VERSION_1;

    fn consistent(self) -> Self {
        let mut features = self;
        // Receive offload needs all three: large segments arrive with their
        // checksum left to us, spread over ordinary buffers.
        let receive_offload = Self::GUEST_TSO4 | Self::GUEST_CSUM | Self::MRG_RXBUF;
        if !features.contains(receive_offload) {
            features.remove(Self::GUEST_TSO4);
        }
        // Segments cut by the device need the checksum it completes.
        if !features.contains(Self::CSUM) {
            features.remove(Self::HOST_TSO4);
        }
        features
    }
}

impl NetFeatures {
    /// Large TCP frames we send are cut by the device.
    pub fn segmentation_offload(self) -> bool {
        self.contains(Self::CSUM | Self::HOST_TSO4)
    }

    /// Large TCP segments are received whole.
    pub fn receive_offload(self) -> bool {
        self.contains(Self::GUEST_TSO4 | Self::GUEST_CSUM | Self::MRG_RXBUF)
    }
}

/// The device lacks features the driver cannot work without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingFeatures {
    pub device: &'static str,
    /// The feature bits missing.
    pub missing: u64,
}

impl fmt::Display for MissingFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device lacks feature bits {:#x}",
            self.device, self.missing
        )?;
        if self.missing & VERSION_1 != 0 {
            write!(f, " (VERSION_1: a legacy-only device)")?;
        }
        Ok(())
    }
}

/// The features to accept of those `offered` (the device's feature bits):
/// what the driver wants, without those whose prerequisites are missing;
/// an error when a required one is missing.
pub fn choose_features<F: DeviceFeatures>(offered: u64) -> Result<F, MissingFeatures> {
    let accepted = (F::from_bits_truncate(offered) & F::WANTED).consistent();
    if accepted.contains(F::REQUIRED) {
        Ok(accepted)
    } else {
        let missing = F::REQUIRED.bits() & !accepted.bits();
        Err(MissingFeatures {
            device: F::DEVICE,
            missing,
        })
    }
}

/// virtio-blk's configuration space (virtio 1.2 §5.2.4), read field by field
/// through `virtio_drivers::config::read_config!`. The 64-bit capacity is
/// read as two halves under the configuration generation.
#[repr(C)]
pub struct BlkConfig {
    pub capacity_low: ReadOnly<u32>,
    pub capacity_high: ReadOnly<u32>,
    pub size_max: ReadOnly<u32>,
    pub seg_max: ReadOnly<u32>,
    pub cylinders: ReadOnly<u16>,
    pub heads: ReadOnly<u8>,
    pub sectors: ReadOnly<u8>,
    pub blk_size: ReadOnly<u32>,
    pub physical_block_exp: ReadOnly<u8>,
    pub alignment_offset: ReadOnly<u8>,
    pub min_io_size: ReadOnly<u16>,
    pub opt_io_size: ReadOnly<u32>,
    pub writeback: ReadOnly<u8>,
    pub unused0: ReadOnly<u8>,
    pub num_queues: ReadOnly<u16>,
    pub max_discard_sectors: ReadOnly<u32>,
    pub max_discard_seg: ReadOnly<u32>,
    pub discard_sector_alignment: ReadOnly<u32>,
    pub max_write_zeroes_sectors: ReadOnly<u32>,
    pub max_write_zeroes_seg: ReadOnly<u32>,
    pub write_zeroes_may_unmap: ReadOnly<u8>,
    pub unused1: [ReadOnly<u8>; 3],
}

/// virtio-net's configuration space (virtio 1.2 §5.1.4), as far as tandem
/// reads it. The MAC address is read byte by byte.
#[repr(C)]
pub struct NetConfig {
    pub mac: [ReadOnly<u8>; 6],
    pub status: ReadOnly<u16>,
    pub max_virtqueue_pairs: ReadOnly<u16>,
    pub mtu: ReadOnly<u16>,
}

/// A virtio-blk request's type (virtio 1.2 §5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BlkRequestType {
    In = 0,
    Out = 1,
    Flush = 4,
    Discard = 11,
    WriteZeroes = 13,
}

/// The header that starts every virtio-blk request (virtio 1.2 §5.2.6:
/// type, reserved, sector; 16 bytes, little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkRequestHeader {
    pub request_type: BlkRequestType,
    /// The first sector (512 bytes) of a read or write; 0 otherwise.
    pub sector: u64,
}

impl BlkRequestHeader {
    pub const LEN: usize = 16;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[0..4].copy_from_slice(&(self.request_type as u32).to_le_bytes());
        bytes[8..16].copy_from_slice(&self.sector.to_le_bytes());
        bytes
    }
}

/// One range of a discard or write-zeroes request (virtio 1.2 §5.2.6:
/// sector, sectors, flags; 16 bytes, little-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkRangeSegment {
    pub sector: u64,
    pub sectors: u32,
    /// [`BlkRangeSegment::UNMAP`] or 0.
    pub flags: u32,
}

impl BlkRangeSegment {
    pub const LEN: usize = 16;
    /// Write zeroes: the device may deallocate the range instead.
    pub const UNMAP: u32 = 1;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[0..8].copy_from_slice(&self.sector.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.sectors.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.flags.to_le_bytes());
        bytes
    }
}

/// The status byte the device writes at the end of a virtio-blk request.
pub const BLK_S_OK: u8 = 0;
pub const BLK_S_IOERR: u8 = 1;
pub const BLK_S_UNSUPP: u8 = 2;

/// The header in front of every frame a virtio-net queue carries (virtio
/// 1.2 §5.1.6; with VERSION_1 always 12 bytes, `num_buffers` included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of headers copied in front of each segment (GSO).
    pub hdr_len: u16,
    /// Payload bytes per segment (GSO).
    pub gso_size: u16,
    /// Where the checksum to complete starts, and where in it it goes
    /// ([`NetHeader::F_NEEDS_CSUM`]).
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Receive buffers the frame spans ([`NetFeatures::MRG_RXBUF`]).
    pub num_buffers: u16,
}

impl NetHeader {
    pub const LEN: usize = 12;
    /// The checksum from `csum_start` on is left to complete (sending), or
    /// was left by a sender on this host (receiving).
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The device checked the frame's checksums.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;

    /// The header at the start of `bytes`; `None` if they are shorter.
    pub fn parse(bytes: &[u8]) -> Option<NetHeader> {
        let b = bytes.get(..Self::LEN)?;
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Some(NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// Writes the header into the first [`NetHeader::LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (10, self.num_buffers),
        ] {
            out[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// The device vouched for the frame's checksums, or a sender on this
    /// host left them to the receiver (the device took the frame from it
    /// unaltered).
    pub fn checksums_trusted(&self) -> bool {
        self.flags & (Self::F_NEEDS_CSUM | Self::F_DATA_VALID) != 0
    }
}

/// `status` bit: the link is up (with [`NetFeatures::STATUS`]).
pub const NET_S_LINK_UP: u16 = 1;

/// Whether a virtio device that asked to be notified when the driver's
/// available index passes `event` (its avail_event, VIRTIO_F_EVENT_IDX)
/// needs a notification now that the index moved from `old` to `new`: the
/// virtio specification's `vring_need_event`, in wrapping 16-bit arithmetic.
/// Only the move that crosses the event notifies; another buffer made
/// available before the device asks again does not.
pub fn needs_notification(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A queue's notifications as the driver decides them: by the event index
/// when the device offers it ([`needs_notification`] from the index at the
/// last decision to the current one), by the device's NO_NOTIFY flag
/// otherwise. A driver may decide after every buffer or once per batch: a
/// batch that crosses the device's event notifies once.
///
/// virtio-drivers' `VirtQueue::should_notify` asks "is the index past the
/// event?" instead, so every buffer added after a notification and before
/// the device next writes its event brings another notification: a VM exit
/// each.
#[derive(Debug, Default)]
pub struct Notifications {
    /// The available index: buffers (chains) added since the queue was set
    /// up, as the queue itself counts them.
    available: u16,
    /// The available index when notification was last decided.
    decided: u16,
    /// Notifications sent.
    sent: u64,
}

impl Notifications {
    /// One more buffer chain was made available.
    pub fn added(&mut self) {
        self.available = self.available.wrapping_add(1);
    }

    /// The available index the device sees.
    pub fn available(&self) -> u16 {
        self.available
    }

    /// Whether the buffers added since the last decision need a
    /// notification: `event` is the device's avail_event (read after the
    /// new available index was published), `None` without the event index,
    /// when `flags_allow` (the device's NO_NOTIFY flag not set) decides.
    pub fn decide(&mut self, event: Option<u16>, flags_allow: impl FnOnce() -> bool) -> bool {
        let old = core::mem::replace(&mut self.decided, self.available);
        let due = match event {
            Some(event) => needs_notification(event, self.available, old),
            None => old != self.available && flags_allow(),
        };
        self.sent += u64::from(due);
        due
    }

    /// Notifications sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// How long a queue's device may hold buffers without returning any before
/// it is notified again ([`StallWatch`]).
pub const STALL_MICROS: u64 = 1_000_000;

/// Notices a queue whose device holds buffers and has returned none for
/// [`STALL_MICROS`]: the device is then notified again. A notification that
/// never arrived would otherwise stop the queue for good (the driver adds
/// nothing more to a full queue, so it never decides to notify again),
/// whatever lost it; notifying a device that is merely slow costs one VM
/// exit and changes nothing. Counted, and said on the console by the caller.
#[derive(Debug, Default)]
pub struct StallWatch {
    /// Since when buffers have been held without one coming back.
    since: Option<u64>,
    /// Notifications sent again.
    renotified: u64,
}

impl StallWatch {
    /// Called whenever the driver looks at the queue: `held` — the device
    /// holds buffers; `returned` — it gave some back since the last call.
    /// True if the device should be notified again now.
    pub fn check(&mut self, now_micros: u64, held: bool, returned: bool) -> bool {
        if !held || returned {
            self.since = held.then_some(now_micros);
            return false;
        }
        let since = *self.since.get_or_insert(now_micros);
        if now_micros.saturating_sub(since) < STALL_MICROS {
            return false;
        }
        self.since = Some(now_micros);
        self.renotified += 1;
        true
    }

    /// Notifications sent again so far.
    pub fn renotified(&self) -> u64 {
        self.renotified
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn a_device_that_returns_nothing_for_a_second_is_notified_again() {
        let mut watch = StallWatch::default();
        assert!(!watch.check(0, false, false), "nothing held");
        assert!(!watch.check(10, true, false), "held from now on");
        assert!(!watch.check(10 + STALL_MICROS - 1, true, false), "not yet");
        assert!(
            watch.check(10 + STALL_MICROS, true, false),
            "a second without a buffer back"
        );
        assert!(
            !watch.check(10 + STALL_MICROS + 1, true, false),
            "once per second"
        );
        assert!(watch.check(10 + 2 * STALL_MICROS, true, false));
        assert_eq!(watch.renotified(), 2);
        // Buffers coming back restart the second; an empty queue stops it.
        assert!(!watch.check(5 * STALL_MICROS, true, true));
        assert!(!watch.check(6 * STALL_MICROS - 1, true, false));
        assert!(!watch.check(6 * STALL_MICROS, false, false));
        assert!(!watch.check(9 * STALL_MICROS, true, false));
        assert!(!watch.check(10 * STALL_MICROS - 1, true, false));
        assert!(watch.check(10 * STALL_MICROS, true, false));
        assert_eq!(watch.renotified(), 3);
    }

    #[test]
    fn configuration_fields_are_where_the_specification_puts_them() {
        assert_eq!(offset_of!(BlkConfig, capacity_low), 0);
        assert_eq!(offset_of!(BlkConfig, capacity_high), 4);
        assert_eq!(offset_of!(BlkConfig, size_max), 8);
        assert_eq!(offset_of!(BlkConfig, seg_max), 12);
        assert_eq!(offset_of!(BlkConfig, blk_size), 20);
        assert_eq!(offset_of!(BlkConfig, opt_io_size), 28);
        assert_eq!(offset_of!(BlkConfig, writeback), 32);
        assert_eq!(offset_of!(BlkConfig, num_queues), 34);
        assert_eq!(offset_of!(BlkConfig, max_discard_sectors), 36);
        assert_eq!(offset_of!(BlkConfig, max_discard_seg), 40);
        assert_eq!(offset_of!(BlkConfig, discard_sector_alignment), 44);
        assert_eq!(offset_of!(BlkConfig, max_write_zeroes_sectors), 48);
        assert_eq!(offset_of!(BlkConfig, max_write_zeroes_seg), 52);
        assert_eq!(offset_of!(BlkConfig, write_zeroes_may_unmap), 56);
        assert_eq!(core::mem::size_of::<BlkConfig>(), 60);
        assert_eq!(offset_of!(NetConfig, mac), 0);
        assert_eq!(offset_of!(NetConfig, status), 6);
        assert_eq!(offset_of!(NetConfig, max_virtqueue_pairs), 8);
        assert_eq!(offset_of!(NetConfig, mtu), 10);
    }

    #[test]
    fn block_requests_are_laid_out_as_the_specification_says() {
        let header = BlkRequestHeader {
            request_type: BlkRequestType::Out,
            sector: 0x0102_0304_0506_0708,
        };
        assert_eq!(
            header.to_bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        let flush = BlkRequestHeader {
            request_type: BlkRequestType::Flush,
            sector: 0,
        };
        assert_eq!(flush.to_bytes()[..4], [4, 0, 0, 0]);
        assert_eq!(BlkRequestType::Discard as u32, 11);
        assert_eq!(BlkRequestType::WriteZeroes as u32, 13);
        let segment = BlkRangeSegment {
            sector: 9,
            sectors: 0x100,
            flags: BlkRangeSegment::UNMAP,
        };
        assert_eq!(
            segment.to_bytes(),
            [9, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn the_net_header_is_laid_out_as_the_specification_says() {
        let header = NetHeader {
            flags: NetHeader::F_NEEDS_CSUM,
            gso_type: NetHeader::GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let mut bytes = [0xffu8; NetHeader::LEN + 2];
        header.emit(&mut bytes);
        assert_eq!(
            bytes[..NetHeader::LEN],
            [1, 1, 66, 0, 0xa8, 5, 34, 0, 16, 0, 3, 0]
        );
        assert_eq!(
            bytes[NetHeader::LEN..],
            [0xff, 0xff],
            "nothing written past it"
        );
        assert_eq!(NetHeader::parse(&bytes), Some(header));
        assert_eq!(NetHeader::parse(&bytes[..NetHeader::LEN - 1]), None);
        assert!(header.checksums_trusted());
        let valid = NetHeader {
            flags: NetHeader::F_DATA_VALID,
            ..NetHeader::default()
        };
        assert!(valid.checksums_trusted());
        assert!(!NetHeader::default().checksums_trusted());
    }

    #[test]
    fn feature_bits_are_the_specifications() {
        assert_eq!(BlkFeatures::FLUSH.bits(), 1 << 9);
        assert_eq!(BlkFeatures::WRITE_ZEROES.bits(), 1 << 14);
        assert_eq!(NetFeatures::HOST_TSO4.bits(), 1 << 11);
        assert_eq!(NetFeatures::MRG_RXBUF.bits(), 1 << 15);
        assert_eq!(
            BlkFeatures::RING_EVENT_IDX.bits(),
            NetFeatures::RING_EVENT_IDX.bits()
        );
        assert_eq!(BlkFeatures::VERSION_1.bits(), 1 << 32);
    }

    /// Everything tandem knows, and bits it does not (virtio-blk's
    /// GEOMETRY, CONFIG_WCE and MQ; virtio-net's GUEST_TSO6, CTRL_VQ and
    /// MQ; the device-independent ACCESS_PLATFORM).
    const OFFERED_BLK: u64 = BlkFeatures::all().bits() | 1 << 4 | 1 << 11 | 1 << 12 | 1 << 33;
    const OFFERED_NET: u64 = NetFeatures::all().bits() | 1 << 8 | 1 << 17 | 1 << 22 | 1 << 33;

    #[test]
    fn what_is_offered_and_wanted_is_accepted_and_nothing_else() {
        let blk: BlkFeatures = choose_features(OFFERED_BLK).unwrap();
        assert!(
            blk.contains(BlkFeatures::FLUSH | BlkFeatures::DISCARD | BlkFeatures::WRITE_ZEROES)
        );
        assert!(blk.event_index() && blk.indirect_descriptors());
        assert_eq!(
            blk.bits() & !BlkFeatures::all().bits(),
            0,
            "unknown bits are never accepted"
        );
        let net: NetFeatures = choose_features(OFFERED_NET).unwrap();
        assert!(net.segmentation_offload() && net.receive_offload());
        assert_eq!(net.bits() & !NetFeatures::all().bits(), 0);
    }

    #[test]
    fn a_legacy_device_is_refused_with_the_reason() {
        let error = choose_features::<BlkFeatures>(OFFERED_BLK & !VERSION_1).unwrap_err();
        assert_eq!(
            error,
            MissingFeatures {
                device: "virtio-blk",
                missing: VERSION_1
            }
        );
        let text = alloc::format!("{error}");
        assert!(
            text.contains("virtio-blk") && text.contains("legacy-only"),
            "{text}"
        );
        assert!(choose_features::<NetFeatures>(OFFERED_NET & !VERSION_1).is_err());
    }

    #[test]
    fn offloads_without_their_prerequisites_are_not_accepted() {
        let base = (NetFeatures::VERSION_1 | NetFeatures::MAC).bits();
        let tso = NetFeatures::HOST_TSO4.bits();
        let net: NetFeatures = choose_features(base | tso).unwrap();
        assert!(
            !net.contains(NetFeatures::HOST_TSO4),
            "HOST_TSO4 without CSUM"
        );
        let net: NetFeatures = choose_features(base | tso | NetFeatures::CSUM.bits()).unwrap();
        assert!(net.segmentation_offload());
        let guest = (NetFeatures::GUEST_TSO4 | NetFeatures::GUEST_CSUM).bits();
        let net: NetFeatures = choose_features(base | guest).unwrap();
        assert!(
            !net.contains(NetFeatures::GUEST_TSO4),
            "GUEST_TSO4 without MRG_RXBUF"
        );
        assert!(net.contains(NetFeatures::GUEST_CSUM));
        let net: NetFeatures =
            choose_features(base | guest | NetFeatures::MRG_RXBUF.bits()).unwrap();
        assert!(net.receive_offload());
    }

    #[test]
    fn only_the_move_across_the_event_notifies() {
        // The device wants to hear of index 10 being passed (event 9).
        assert!(needs_notification(9, 10, 9));
        assert!(needs_notification(9, 12, 8), "a batch that crosses it");
        assert!(!needs_notification(9, 11, 10), "already notified at 10");
        assert!(!needs_notification(9, 9, 8), "not yet at the event");
        assert!(!needs_notification(9, 9, 9), "nothing added");
    }

    #[test]
    fn the_indices_wrap() {
        assert!(needs_notification(65535, 0, 65535));
        assert!(needs_notification(65534, 1, 65533));
        assert!(
            !needs_notification(65534, 1, 0),
            "crossed at 65535 → 0 before"
        );
        assert!(
            needs_notification(3, 4, 65530),
            "a batch across the wrap and the event"
        );
        assert!(
            !needs_notification(65000, 2, 1),
            "an event far behind was passed long ago"
        );
    }

    #[test]
    fn buffers_added_before_the_device_asks_again_bring_no_notification() {
        let mut n = Notifications::default();
        // The device, idle, asks to hear of the next buffer (event 0).
        n.added();
        assert!(n.decide(Some(0), || unreachable!()));
        // It has not looked at the queue since: nothing more to tell it,
        // where "past the event" would notify every time.
        for _ in 0..5 {
            n.added();
            assert!(!n.decide(Some(0), || unreachable!()));
        }
        // It caught up (event 6) and asks again: a batch crossing it
        // notifies once.
        n.added();
        n.added();
        n.added();
        assert!(n.decide(Some(6), || unreachable!()));
        assert!(!n.decide(Some(6), || unreachable!()), "nothing added since");
        assert_eq!(n.sent(), 2);
        assert_eq!(n.available(), 9);
    }

    #[test]
    fn without_the_event_index_the_flag_decides_for_new_buffers() {
        let mut n = Notifications::default();
        assert!(!n.decide(None, || true), "nothing added");
        n.added();
        assert!(n.decide(None, || true));
        n.added();
        assert!(
            !n.decide(None, || false),
            "the device suppressed notifications"
        );
        assert_eq!(n.sent(), 1);
    }

    #[test]
    fn the_decision_survives_the_index_wrapping() {
        let mut n = Notifications::default();
        for _ in 0..65534 {
            n.added();
        }
        assert!(n.decide(Some(65533), || unreachable!()));
        n.added();
        n.added();
        n.added();
        // 65534 → 1 crosses an event of 65535.
        assert_eq!(n.available(), 1);
        assert!(n.decide(Some(65535), || unreachable!()));
    }
}
