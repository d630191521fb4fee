//! Entry headers and the 32→64-bit start of the tandem image.
//!
//! The image is one ELF file linked at 1 MiB. It carries a Multiboot1 header
//! with the address fields (so that QEMU's `-kernel` and iPXE load a 64-bit
//! ELF) and a PVH note. Both entry points arrive in 32-bit protected mode with
//! paging off; the start code builds identity page tables over the first
//! [`IDENTITY_MAPPED_BYTES`], enables SSE (the precompiled `core` uses it),
//! switches to long mode and calls [`boot_entry`], which copies the memory map
//! and the command line out of the loader's structures and hands them to the
//! kernel's `kernel_main`.
#![no_std]

use core::arch::global_asm;

/// RAM reachable through the boot page tables (2 MiB pages).
pub const IDENTITY_MAPPED_BYTES: u64 = 64 << 30;
const PAGE_DIRECTORIES: usize = (IDENTITY_MAPPED_BYTES >> 30) as usize;

const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
const PVH_START_INFO_MAGIC: u32 = 0x336E_C578;

global_asm!(
    r#"
.section .multiboot_header, "a"
.balign 4
multiboot_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long multiboot_header
    .long __image_start
    .long __load_end
    .long __bss_end
    .long _start32

.section .note.pvh, "a"
.balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad _pvh_start32

.section .boot.text, "ax"
.code32
.global _start32
_start32:
    cli
    mov $1, %edi
    jmp 1f
.global _pvh_start32
_pvh_start32:
    cli
    mov $2, %edi
1:
    mov %ebx, %esi
    mov %eax, %ebp
    mov %edi, %edx
    cld
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov %edx, %edi

    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $3, %eax
    xor %ecx, %ecx
2:
    mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp ${pds}, %ecx
    jb 2b
    xor %ecx, %ecx
3:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax
    mov %eax, boot_pd+4(,%ecx,8)
    inc %ecx
    cmp ${pd_entries}, %ecx
    jb 3b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0xFFFFFFF3, %eax
    or $0x80000003, %eax
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $4f

.code64
4:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %edi, %edi
    mov %esi, %esi
    mov %ebp, %edx
    xor %ebp, %ebp
    call boot_entry
5:
    cli
    hlt
    jmp 5b

.balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

.section .bss.page_tables, "aw", @nobits
.balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * {pds}

.section .bss.boot_stack, "aw", @nobits
.balign 16
.global boot_stack_bottom
boot_stack_bottom:
    .skip {stack}
.global boot_stack_top
boot_stack_top:
"#,
    pds = const PAGE_DIRECTORIES,
    pd_entries = const PAGE_DIRECTORIES * 512,
    stack = const BOOT_STACK_BYTES,
    options(att_syntax)
);

/// Size of the one kernel stack.
pub const BOOT_STACK_BYTES: usize = 512 * 1024;

/// How the image was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    Multiboot,
    Pvh,
}

/// A range of usable RAM, `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub end: u64,
}

const MAX_REGIONS: usize = 64;
const CMDLINE_CAPACITY: usize = 4096;

/// What the loader told us, copied out of its structures.
pub struct BootInfo {
    pub protocol: BootProtocol,
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    cmdline: &'static str,
    /// True when the loader's command line did not fit and was cut.
    pub cmdline_truncated: bool,
}

impl BootInfo {
    /// Usable RAM as reported by the loader.
    pub fn usable_memory(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// The kernel command line (`key=value` words), without the image name.
    pub fn cmdline(&self) -> &'static str {
        self.cmdline
    }
}

/// First byte after the loaded image, its bss and the boot stack.
pub fn image_end() -> u64 {
    unsafe extern "C" {
        static __image_end: u8;
    }
    &raw const __image_end as u64
}

/// First byte of the loaded image.
pub fn image_start() -> u64 {
    unsafe extern "C" {
        static __image_start: u8;
    }
    &raw const __image_start as u64
}

/// Lowest address of the kernel stack (for overflow diagnostics).
pub fn stack_bottom() -> u64 {
    unsafe extern "C" {
        static boot_stack_bottom: u8;
    }
    &raw const boot_stack_bottom as u64
}

static mut CMDLINE_COPY: [u8; CMDLINE_CAPACITY] = [0; CMDLINE_CAPACITY];

unsafe extern "Rust" {
    /// Provided by the kernel binary.
    fn kernel_main(info: BootInfo) -> !;
}

/// Called by the start code in long mode with the identity map in place.
///
/// # Safety
/// Only the start code calls this, with the loader's untouched structures.
#[unsafe(no_mangle)]
unsafe extern "C" fn boot_entry(protocol: u32, info: u32, magic: u32) -> ! {
    let info = info as u64 as *const u8;
    // SAFETY: the loader passed a valid info structure in identity-mapped low memory.
    let boot = unsafe {
        match protocol {
            1 if magic == MULTIBOOT_BOOTLOADER_MAGIC => parse_multiboot(info),
            2 if read_u32(info, 0) == PVH_START_INFO_MAGIC => parse_pvh(info),
            _ => empty_info(BootProtocol::Multiboot),
        }
    };
    // SAFETY: the kernel provides this symbol; it never returns.
    unsafe { kernel_main(boot) }
}

fn empty_info(protocol: BootProtocol) -> BootInfo {
    BootInfo {
        protocol,
        regions: [MemoryRegion::default(); MAX_REGIONS],
        region_count: 0,
        cmdline: "",
        cmdline_truncated: false,
    }
}

unsafe fn read_u32(base: *const u8, offset: usize) -> u32 {
    // SAFETY: the caller guarantees the structure is mapped.
    unsafe { core::ptr::read_unaligned(base.add(offset) as *const u32) }
}

unsafe fn read_u64(base: *const u8, offset: usize) -> u64 {
    // SAFETY: the caller guarantees the structure is mapped.
    unsafe { core::ptr::read_unaligned(base.add(offset) as *const u64) }
}

fn push_region(info: &mut BootInfo, start: u64, length: u64) {
    if length == 0 || info.region_count == MAX_REGIONS {
        return;
    }
    let end = start.saturating_add(length).min(IDENTITY_MAPPED_BYTES);
    if end > start {
        info.regions[info.region_count] = MemoryRegion { start, end };
        info.region_count += 1;
    }
}

/// Copies a NUL-terminated string into the static buffer; `skip_first_word`
/// drops the image name that Multiboot loaders put first.
unsafe fn copy_cmdline(info: &mut BootInfo, address: u64, skip_first_word: bool) {
    if address == 0 {
        return;
    }
    let source = address as *const u8;
    let mut length = 0usize;
    // SAFETY: the loader's string is NUL-terminated in mapped memory.
    while length < CMDLINE_CAPACITY * 4 && unsafe { *source.add(length) } != 0 {
        length += 1;
    }
    // SAFETY: `length` bytes were just read.
    let mut bytes = unsafe { core::slice::from_raw_parts(source, length) };
    if skip_first_word {
        let first_end = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
        bytes = &bytes[first_end..];
    }
    if bytes.len() > CMDLINE_CAPACITY {
        bytes = &bytes[..CMDLINE_CAPACITY];
        info.cmdline_truncated = true;
    }
    // SAFETY: single-threaded boot; nothing else references the buffer yet.
    let buffer = unsafe { &mut *(&raw mut CMDLINE_COPY) };
    for (slot, byte) in buffer.iter_mut().zip(bytes) {
        // Keep the command line plain ASCII so that it is always valid UTF-8.
        *slot = if byte.is_ascii() && !byte.is_ascii_control() {
            *byte
        } else {
            b' '
        };
    }
    let copied = &buffer[..bytes.len()];
    info.cmdline = core::str::from_utf8(copied).unwrap_or("").trim();
}

unsafe fn parse_multiboot(info_ptr: *const u8) -> BootInfo {
    let mut info = empty_info(BootProtocol::Multiboot);
    // SAFETY (whole function): the Multiboot info structure and what it points
    // to are mapped and were written by the loader.
    unsafe {
        let flags = read_u32(info_ptr, 0);
        if flags & (1 << 2) != 0 {
            copy_cmdline(&mut info, read_u32(info_ptr, 16) as u64, true);
        }
        if flags & (1 << 6) != 0 {
            let length = read_u32(info_ptr, 44) as u64;
            let base = read_u32(info_ptr, 48) as u64;
            let mut entry = base;
            while entry + 24 <= base + length {
                let entry_ptr = entry as *const u8;
                let size = read_u32(entry_ptr, 0) as u64;
                let start = read_u64(entry_ptr, 4);
                let region_length = read_u64(entry_ptr, 12);
                let kind = read_u32(entry_ptr, 20);
                if kind == 1 {
                    push_region(&mut info, start, region_length);
                }
                entry += size + 4;
            }
        } else if flags & 1 != 0 {
            // Only the basic lower/upper memory sizes, in KiB.
            let upper = read_u32(info_ptr, 8) as u64;
            push_region(&mut info, 0x100000, upper * 1024);
        }
    }
    info
}

unsafe fn parse_pvh(start_info: *const u8) -> BootInfo {
    let mut info = empty_info(BootProtocol::Pvh);
    // SAFETY (whole function): the PVH start info and what it points to are
    // mapped and were written by the loader.
    unsafe {
        let version = read_u32(start_info, 4);
        copy_cmdline(&mut info, read_u64(start_info, 24), false);
        if version >= 1 {
            let map = read_u64(start_info, 40) as *const u8;
            let entries = read_u32(start_info, 48) as usize;
            for index in 0..entries.min(1024) {
                let entry = map.add(index * 24);
                if read_u32(entry, 16) == 1 {
                    push_region(&mut info, read_u64(entry, 0), read_u64(entry, 8));
                }
            }
        }
    }
    info
}
