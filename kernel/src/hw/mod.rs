//! The hardware layer: the only part of the kernel with `unsafe`.
pub mod clock;
pub mod cpu;
pub mod crc;
pub mod disk;
pub mod dma;
pub mod mem_ops;
pub mod memory;
pub mod netdev;
pub mod pci;
pub mod power;
mod runtime;
pub mod serial;
pub mod virtio;
