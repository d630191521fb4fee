//! PCI: configuration space through ports 0xCF8/0xCFC, bus enumeration, and
//! the virtio transports of the devices tandem drives.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use tandem_kernel::virtio::{NET_S_LINK_UP, NetConfig};
use virtio_drivers::config::read_config;
use virtio_drivers::transport::pci::bus::{
    Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType, PciRoot,
};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result as VirtioResult};
use x86_64::instructions::port::Port;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::dma::KernelHal;

/// Configuration mechanism #1 (I/O ports).
pub struct PortConfigurationAccess;

fn address(device_function: DeviceFunction, register_offset: u8) -> u32 {
    0x8000_0000
        | (device_function.bus as u32) << 16
        | (device_function.device as u32) << 11
        | (device_function.function as u32) << 8
        | (register_offset as u32 & 0xfc)
}

impl ConfigurationAccess for PortConfigurationAccess {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        // SAFETY: the configuration ports are used only through this type,
        // from the one kernel thread.
        unsafe {
            Port::<u32>::new(0xcf8).write(address(device_function, register_offset));
            Port::<u32>::new(0xcfc).read()
        }
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        // SAFETY: as for `read_word`.
        unsafe {
            Port::<u32>::new(0xcf8).write(address(device_function, register_offset));
            Port::<u32>::new(0xcfc).write(data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortConfigurationAccess
    }
}

/// A virtio transport that the kernel can still reach after handing it to a
/// driver, to read device configuration the driver does not expose (the
/// virtio-net link status), and that remembers where each queue's used ring
/// is (for the device's event index: `NotifyGate` in `virtio.rs`).
#[derive(Clone)]
pub struct SharedTransport(Rc<RefCell<PciTransport>>, Rc<RefCell<Vec<UsedRing>>>);

/// Where a queue's used ring (the device's area) is, for the event index
/// the device writes after it.
#[derive(Clone, Copy)]
struct UsedRing {
    queue: u16,
    address: PhysAddr,
    size: u32,
}

impl SharedTransport {
    fn new(transport: PciTransport) -> Self {
        Self(Rc::new(RefCell::new(transport)), Rc::default())
    }

    /// The address of `queue`'s avail_event (VIRTIO_F_EVENT_IDX): the u16
    /// after the used ring's entries, where the device says which available
    /// index it wants to be notified of. `None` before the queue is set up.
    pub fn avail_event_address(&self, queue: u16) -> Option<PhysAddr> {
        let rings = self.1.borrow();
        let ring = rings.iter().find(|r| r.queue == queue)?;
        // flags (u16), idx (u16), then `size` entries of id (u32) and len (u32).
        Some(ring.address + 4 + 8 * ring.size as PhysAddr)
    }

    /// virtio-net: is the link up (VIRTIO_NET_S_LINK_UP in the status field)?
    pub fn net_link_up(&self) -> bool {
        let status: VirtioResult<u16> = read_config!(*self, NetConfig, status);
        status
            .map(|status| status & NET_S_LINK_UP != 0)
            .unwrap_or(true)
    }
}

impl Transport for SharedTransport {
    fn device_type(&self) -> DeviceType {
        self.0.borrow().device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.0.borrow_mut().read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.0.borrow_mut().write_driver_features(driver_features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.0.borrow_mut().max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.0.borrow_mut().notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.0.borrow().get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.0.borrow_mut().set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.0.borrow_mut().set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.0.borrow().requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut rings = self.1.borrow_mut();
        rings.retain(|r| r.queue != queue);
        rings.push(UsedRing {
            queue,
            address: device_area,
            size,
        });
        drop(rings);
        self.0
            .borrow_mut()
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.1.borrow_mut().retain(|r| r.queue != queue);
        self.0.borrow_mut().queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.borrow_mut().queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.0.borrow_mut().ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.0.borrow().read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> VirtioResult<T> {
        self.0.borrow().read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> VirtioResult<()> {
        self.0.borrow_mut().write_config_space(offset, value)
    }
}

/// A virtio device found on the bus.
pub struct VirtioDevice {
    pub location: DeviceFunction,
    pub kind: DeviceType,
    /// Legacy interrupt line as the firmware routed it (config offset 0x3C).
    pub irq: u8,
    pub transport: SharedTransport,
}

/// A virtio device tandem cannot drive, and why.
pub struct UnusableDevice {
    pub location: DeviceFunction,
    pub vendor_id: u16,
    pub device_id: u16,
    pub legacy_only: bool,
}

impl fmt::Display for UnusableDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "virtio device {:04x}:{:04x} at {}",
            self.vendor_id, self.device_id, self.location
        )?;
        if self.legacy_only {
            write!(
                f,
                " is legacy-only; tandem needs a modern or transitional virtio device (QEMU: do not set disable-modern=on)"
            )
        } else {
            write!(f, " could not be set up")
        }
    }
}

fn buses_to_scan(root: &PciRoot<PortConfigurationAccess>) -> Vec<u8> {
    let mut buses = Vec::from([0u8]);
    let mut index = 0;
    while index < buses.len() && buses.len() < 256 {
        let bus = buses[index];
        for (location, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                let secondary = (PortConfigurationAccess.read_word(location, 0x18) >> 8) as u8;
                if secondary != 0 && !buses.contains(&secondary) {
                    buses.push(secondary);
                }
            }
        }
        index += 1;
    }
    buses
}

fn is_virtio_block_or_net(info: &DeviceFunctionInfo) -> bool {
    matches!(
        virtio_device_type(info),
        Some(DeviceType::Block | DeviceType::Network)
    )
}

/// Finds every virtio-blk and virtio-net device, in PCI order.
pub fn find_virtio_devices() -> (Vec<VirtioDevice>, Vec<UnusableDevice>) {
    let mut root = PciRoot::new(PortConfigurationAccess);
    let mut found = Vec::new();
    let mut unusable = Vec::new();
    for bus in buses_to_scan(&root) {
        let devices: Vec<_> = root
            .enumerate_bus(bus)
            .filter(|(_, info)| is_virtio_block_or_net(info))
            .collect();
        for (location, info) in devices {
            let Some(kind) = virtio_device_type(&info) else {
                continue;
            };
            let (_, command) = root.get_status_command(location);
            root.set_command(
                location,
                command | Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
            );
            let irq = PortConfigurationAccess.read_word(location, 0x3c) as u8;
            match PciTransport::new::<KernelHal, _>(&mut root, location) {
                Ok(transport) => found.push(VirtioDevice {
                    location,
                    kind,
                    irq,
                    transport: SharedTransport::new(transport),
                }),
                Err(error) => {
                    log::debug!("virtio transport at {location}: {error:?}");
                    unusable.push(UnusableDevice {
                        location,
                        vendor_id: info.vendor_id,
                        device_id: info.device_id,
                        // Transitional IDs 0x1000-0x103f also speak modern
                        // virtio unless the modern interface was disabled.
                        legacy_only: (0x1000..0x1040).contains(&info.device_id),
                    })
                }
            }
        }
    }
    (found, unusable)
}
