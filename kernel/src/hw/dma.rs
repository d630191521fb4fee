//! The virtio-drivers HAL: with RAM identity mapped, DMA memory is zeroed,
//! page-aligned heap memory and a buffer's physical address is its address.

use core::alloc::Layout;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

const PAGE: usize = 4096;

pub struct KernelHal;

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("DMA layout fits in memory")
}

// SAFETY: the allocations are identity mapped, page aligned and zeroed, and
// stay allocated until `dma_dealloc`.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc::alloc::alloc_zeroed(layout(pages)) };
        let Some(pointer) = NonNull::new(pointer) else {
            alloc::alloc::handle_alloc_error(layout(pages));
        };
        (pointer.as_ptr() as PhysAddr, pointer)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("a BAR is never at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
