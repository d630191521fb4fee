//! Interrupts: IDT, the legacy PIC, the PIT tick, and the idle wait.
//!
//! Rust code always runs with interrupts disabled: the precompiled `core`
//! and `alloc` use the System V red zone, which an interrupt frame pushed on
//! the same stack would corrupt. Interrupts are enabled only inside
//! [`wait_for_interrupt`]'s `sti; hlt` (an `asm!` block without `nostack`,
//! so nothing lives in the red zone across it). IRQ handlers are assembly
//! stubs that record the IRQ and clear IF in the saved flags so that
//! `iretq` comes back with interrupts off; a level-triggered device line
//! that is still asserted therefore cannot storm — the event loop
//! acknowledges the device before it waits again.
//!
//! The master PIC's lines (the tick, the UART) get their EOI in the stub.
//! The slave's (PCI INTx lines) get it from the event loop, through
//! [`end_slave_interrupts`], once it has acknowledged the devices: an EOI
//! while the device still holds its line up makes the slave signal the
//! master again, the master latches that edge, and when the loop then
//! lowers the line by acknowledging the device, the CPU's next `sti` takes
//! the latched interrupt with nothing behind it — a spurious IRQ 15 and a
//! wasted round after every device interrupt.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::port::Port;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

const PIC_VECTOR_BASE: u8 = 32;
/// PIT tick rate: the longest an idle machine sleeps before timers run.
/// Network and console input wake it at once; 20 ms is well inside the
/// shortest protocol timer (the 50 ms heartbeat), and each wake-up costs
/// an idle TCG guest about 0.01 % of a host core (100 Hz measured 2.5 %,
/// 50 Hz 1.2 %).
pub const TICK_HZ: u32 = 50;

/// Bit n set when IRQ n fired since the last [`take_pending_irqs`].
#[unsafe(no_mangle)]
static TANDEM_PENDING_IRQS: AtomicU64 = AtomicU64::new(0);
static INTERRUPT_COUNT: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
.section .text.interrupts, "ax"
.macro exception_no_error n
tandem_exception_\n:
    push $0
    push $\n
    jmp tandem_exception_common
.endm
.macro exception_with_error n
tandem_exception_\n:
    push $\n
    jmp tandem_exception_common
.endm
.macro irq n
tandem_irq_\n:
    push %rax
    .if \n < 8
    mov $0x20, %al
    out %al, $0x20
    .endif
    lock btsq $\n, TANDEM_PENDING_IRQS(%rip)
    andq $-513, 24(%rsp)
    pop %rax
    iretq
.endm

exception_no_error 0
exception_no_error 1
exception_no_error 2
exception_no_error 3
exception_no_error 4
exception_no_error 5
exception_no_error 6
exception_no_error 7
exception_with_error 8
exception_no_error 9
exception_with_error 10
exception_with_error 11
exception_with_error 12
exception_with_error 13
exception_with_error 14
exception_no_error 15
exception_no_error 16
exception_with_error 17
exception_no_error 18
exception_no_error 19
exception_no_error 20
exception_with_error 21
exception_no_error 22
exception_no_error 23
exception_no_error 24
exception_no_error 25
exception_no_error 26
exception_no_error 27
exception_no_error 28
exception_with_error 29
exception_with_error 30
exception_no_error 31
irq 0
irq 1
irq 2
irq 3
irq 4
irq 5
irq 6
irq 7
irq 8
irq 9
irq 10
irq 11
irq 12
irq 13
irq 14
irq 15

tandem_exception_common:
    mov (%rsp), %rdi
    mov 8(%rsp), %rsi
    mov 16(%rsp), %rdx
    mov %cr2, %rcx
    and $-16, %rsp
    call tandem_exception

.section .rodata.interrupts, "a"
.balign 8
.global tandem_interrupt_stubs
tandem_interrupt_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad tandem_exception_\n
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .quad tandem_irq_\n
    .endr
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static tandem_interrupt_stubs: [u64; 48];
}

#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY_ENTRY: IdtEntry = IdtEntry {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_middle: 0,
    offset_high: 0,
    reserved: 0,
};

#[repr(C, align(16))]
struct Idt([IdtEntry; 48]);

static mut IDT: Idt = Idt([EMPTY_ENTRY; 48]);

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection fault",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Called by the exception stubs: reports the fault and stops.
#[unsafe(no_mangle)]
extern "C" fn tandem_exception(vector: u64, error_code: u64, rip: u64, cr2: u64) -> ! {
    let name = EXCEPTION_NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("unknown");
    panic!("CPU exception {vector} ({name}) at rip={rip:#x} error={error_code:#x} cr2={cr2:#x}");
}

/// Loads the IDT (exceptions 0–31, PIC IRQs at 32–47).
pub fn init_idt() {
    // SAFETY: single-threaded init; the IDT is static and never moves.
    unsafe {
        let idt = &mut *(&raw mut IDT);
        let stubs = &*(&raw const tandem_interrupt_stubs);
        for (entry, address) in idt.0.iter_mut().zip(stubs.iter()) {
            *entry = IdtEntry {
                offset_low: *address as u16,
                selector: 0x08,
                ist: 0,
                attributes: 0x8e, // present, DPL 0, interrupt gate
                offset_middle: (*address >> 16) as u16,
                offset_high: (*address >> 32) as u32,
                reserved: 0,
            };
        }
        lidt(&DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: VirtAddr::new(idt as *const Idt as u64),
        });
    }
}

/// Remaps the PICs to vectors 32–47, masks every line but the cascade.
pub fn init_pic() {
    // SAFETY: the PIC ports belong to this module.
    unsafe {
        let mut master_command = Port::<u8>::new(0x20);
        let mut master_data = Port::<u8>::new(0x21);
        let mut slave_command = Port::<u8>::new(0xa0);
        let mut slave_data = Port::<u8>::new(0xa1);
        master_command.write(0x11);
        slave_command.write(0x11);
        master_data.write(PIC_VECTOR_BASE);
        slave_data.write(PIC_VECTOR_BASE + 8);
        master_data.write(4);
        slave_data.write(2);
        master_data.write(0x01);
        slave_data.write(0x01);
        master_data.write(0xfb); // all masked but IRQ2 (cascade)
        slave_data.write(0xff);
    }
}

/// Unmasks a legacy IRQ line (0–15).
pub fn unmask_irq(irq: u8) {
    if irq >= 16 {
        return;
    }
    let (port, bit) = if irq < 8 {
        (0x21, irq)
    } else {
        (0xa1, irq - 8)
    };
    // SAFETY: read-modify-write of the PIC mask register.
    unsafe {
        let mut data = Port::<u8>::new(port);
        let mask = data.read();
        data.write(mask & !(1 << bit));
    }
}

/// Starts the PIT channel 0 periodic tick (IRQ 0).
pub fn start_tick() {
    let divisor = (1_193_182 / TICK_HZ) as u16;
    // SAFETY: PIT channel 0 belongs to this module.
    unsafe {
        Port::<u8>::new(0x43).write(0b0011_0100); // channel 0, lobyte/hibyte, rate generator
        Port::<u8>::new(0x40).write(divisor as u8);
        Port::<u8>::new(0x40).write((divisor >> 8) as u8);
    }
    unmask_irq(0);
}

/// Halts until an interrupt arrives (a device, the console or the tick).
pub fn wait_for_interrupt() {
    // SAFETY: `sti; hlt` is atomic with respect to interrupts (STI's shadow);
    // the IRQ stubs return with IF cleared. No `nostack`: the compiler keeps
    // nothing in the red zone across this block.
    unsafe { core::arch::asm!("sti", "hlt", "cli") };
    INTERRUPT_COUNT.fetch_add(1, Ordering::Relaxed);
}

/// IRQ lines that fired since the last call.
pub fn take_pending_irqs() -> u64 {
    TANDEM_PENDING_IRQS.swap(0, Ordering::AcqRel)
}

/// Ends the slave PIC's interrupt (and the master's cascade) once the
/// devices behind the lines in `irqs` have been acknowledged; nothing if
/// no slave line fired. A line a device raised again meanwhile interrupts
/// anew once IF is set.
pub fn end_slave_interrupts(irqs: u64) {
    if irqs & 0xff00 == 0 {
        return;
    }
    // SAFETY: non-specific EOIs to the two PICs, which this module set up;
    // at most one slave interrupt is in service (IF is set only in
    // `wait_for_interrupt`, and each stub returns with it clear).
    unsafe {
        Port::<u8>::new(0xa0).write(0x20);
        Port::<u8>::new(0x20).write(0x20);
    }
}

/// Wake-ups from [`wait_for_interrupt`] since boot.
pub fn wakeups() -> u64 {
    INTERRUPT_COUNT.load(Ordering::Relaxed)
}

/// Resets the CPU by loading an empty IDT and raising an exception.
pub fn triple_fault() -> ! {
    // SAFETY: the machine is being reset on purpose.
    unsafe {
        lidt(&DescriptorTablePointer {
            limit: 0,
            base: VirtAddr::new(0),
        });
        core::arch::asm!("int3", options(noreturn));
    }
}
