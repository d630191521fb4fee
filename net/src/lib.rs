//! Networking for the tandem image: smoltcp interfaces over NIC frame queues
//! (virtio-net's, in the image).
//!
//! Each NIC gets its own smoltcp [`Interface`] and socket set, configured
//! statically or by DHCP ([`NicAddressing`]). The front-end network and the
//! replication link are separate NICs, so keeping them apart here keeps a
//! socket on one from ever answering on the other. ICMP echo is answered by
//! smoltcp itself.
//!
//! Modules by what they do: [`FrameDevice`] adapts a NIC's frame queues to
//! smoltcp (`device`), [`SegmentBatch`] gathers TCP segments for the
//! device's segmentation offload (`segment_batch`), and `nic` runs an
//! interface per NIC.
//!
//! The crate holds no `unsafe`: the queues whose buffers a device owns while
//! it works on them live in the kernel's hardware layer, behind the safe
//! [`FrameQueues`] trait.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod checksum;
mod device;
pub mod frames;
mod listener;
mod nic;
mod segment_batch;
mod stretch_ack;

pub use device::{
    FrameDevice, FrameError, FrameQueues, MAX_FRAME_LEN, MAX_SEGMENTED_FRAME_LEN, NicCounters,
    ReceivedFrame,
};
pub use listener::Listener;
pub use nic::{ClaimError, Nic, NicAddressing, NicEvent};
pub use segment_batch::{FLOWS, FlowBatches, FlowPush, Pushed, SegmentBatch, Segmentation};
pub use stretch_ack::ACK_DELAY;

pub use smoltcp;
