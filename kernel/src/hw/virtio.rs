//! What the two virtio drivers share: feature negotiation (virtio 1.2
//! §3.1.1) and the notification gate (the event index). The rules
//! themselves, without I/O, are `tandem_kernel::virtio`.

use tandem_kernel::virtio::{DeviceFeatures, Notifications, choose_features};
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::{Error, PhysAddr};

use super::pci::SharedTransport;

/// Resets the device and negotiates its features: those the driver wants of
/// those offered ([`choose_features`]), confirmed by the device keeping
/// FEATURES_OK set when read back. On failure the device is marked FAILED
/// and the reason logged. The driver then sets up its queues and calls
/// `finish_init`.
pub fn negotiate<F: DeviceFeatures>(transport: &mut SharedTransport) -> Result<F, Error> {
    transport.set_status(DeviceStatus::empty());
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = transport.read_device_features();
    let features = match choose_features::<F>(offered) {
        Ok(features) => features,
        Err(missing) => {
            log::warn!("{missing}");
            transport.set_status(
                DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FAILED,
            );
            return Err(Error::Unsupported);
        }
    };
    transport.write_driver_features(features.bits());
    let negotiated = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
    transport.set_status(negotiated);
    // The device clears FEATURES_OK when it cannot work with this subset.
    if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
        log::warn!(
            "{}: the device refused features {:#x} (offered {offered:#x})",
            F::DEVICE,
            features.bits()
        );
        transport.set_status(negotiated | DeviceStatus::FAILED);
        return Err(Error::Unsupported);
    }
    transport.set_guest_page_size(virtio_drivers::PAGE_SIZE as u32);
    log::debug!("{}: features {features:?}", F::DEVICE);
    Ok(features)
}

/// Decides a queue's notifications by the device's avail_event, as the
/// virtio specification does ([`Notifications`]); by the queue's NO_NOTIFY
/// flag when the device has no event index.
pub struct NotifyGate {
    /// Where the device writes its avail_event; `None` without
    /// VIRTIO_F_EVENT_IDX.
    avail_event: Option<PhysAddr>,
    rule: Notifications,
}

impl NotifyGate {
    /// The gate of `queue`, once the queue is set up.
    pub fn new(transport: &SharedTransport, queue: u16, event_index: bool) -> Self {
        let avail_event = if event_index {
            transport.avail_event_address(queue)
        } else {
            None
        };
        Self {
            avail_event,
            rule: Notifications::default(),
        }
    }

    /// One more buffer chain was added to the queue.
    pub fn added(&mut self) {
        self.rule.added();
    }

    /// Whether the buffers added since the last decision need a
    /// notification; `flags_allow` answers for a device without event index
    /// (`VirtQueue::should_notify`, which then reads the flag).
    pub fn notify_due(&mut self, flags_allow: impl FnOnce() -> bool) -> bool {
        let event = self.avail_event.map(|address| {
            // The new available index must be visible before the device's
            // event is read (a store then a load: a full fence on x86).
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            // SAFETY: the address is inside the queue's used ring, which the
            // queue allocated (identity mapped, aligned) and keeps while it
            // lives; the device writes it, hence a volatile read.
            u16::from_le(unsafe { core::ptr::read_volatile(address as *const u16) })
        });
        self.rule.decide(event, flags_allow)
    }

    /// Notifications sent so far.
    pub fn sent(&self) -> u64 {
        self.rule.sent()
    }
}
