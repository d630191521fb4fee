//! The heap, over the largest block of usable RAM above the image, and the
//! memory primitives the precompiled `core` expects from the platform.

use linked_list_allocator::LockedHeap;
use tandem_boot::MemoryRegion;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

const PAGE: u64 = 4096;
const ONE_MIB: u64 = 1 << 20;

/// Picks the heap range: the largest usable region once the first MiB and
/// the image (code, data, bss, stack) are taken out.
pub fn choose_heap(
    regions: &[MemoryRegion],
    image_start: u64,
    image_end: u64,
) -> Option<MemoryRegion> {
    let mut best: Option<MemoryRegion> = None;
    for region in regions {
        let mut pieces = [*region, MemoryRegion::default()];
        // Cut the image out of the region.
        if region.start < image_end && image_start < region.end {
            pieces = [
                MemoryRegion {
                    start: region.start,
                    end: image_start,
                },
                MemoryRegion {
                    start: image_end,
                    end: region.end,
                },
            ];
        }
        for piece in pieces {
            let start = piece.start.max(ONE_MIB).div_ceil(PAGE) * PAGE;
            let end = piece.end / PAGE * PAGE;
            if end > start && best.is_none_or(|b| end - start > b.end - b.start) {
                best = Some(MemoryRegion { start, end });
            }
        }
    }
    best
}

/// Hands `region` to the allocator.
///
/// # Safety
/// `region` must be usable RAM, identity mapped, and used by nothing else.
pub unsafe fn init_heap(region: MemoryRegion) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        HEAP.lock().init(
            region.start as *mut u8,
            (region.end - region.start) as usize,
        )
    };
}

/// (used, free) heap bytes.
pub fn heap_usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}

// The precompiled compiler_builtins for this target does not export these.
// Inline assembly keeps LLVM from lowering them into calls to themselves.

#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid, non-overlapping ranges of `n` bytes.
    unsafe { super::mem_ops::copy_forward(dest, src, n) };
    dest
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid ranges; copying backwards when the
    // destination starts inside the source keeps overlapping moves correct.
    unsafe {
        if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
            super::mem_ops::copy_forward(dest, src, n);
        } else {
            core::arch::asm!("std", "rep movsb", "cld",
                inout("rcx") n => _, inout("rdi") dest.add(n).wrapping_sub(1) => _,
                inout("rsi") src.add(n).wrapping_sub(1) => _, options(nostack));
        }
    }
    dest
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid range of `n` bytes.
    unsafe { super::mem_ops::fill(dest, value as u8, n) };
    dest
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut index = 0;
    while index < n {
        // SAFETY: the caller passes valid ranges of `n` bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(index)),
                core::ptr::read_volatile(b.add(index)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
        index += 1;
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
