//! Stopping and restarting the machine.

use x86_64::instructions::port::Port;

/// QEMU's isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`):
/// writing `value` makes QEMU exit with status `value * 2 + 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the image stops with an error; the QEMU exit status is `2 * code + 1`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum FailureExit {
    /// A bad command-line key or value (QEMU exit status 3).
    Config = 1,
    /// A panic or CPU exception (QEMU exit status 5).
    Panic = 2,
}

/// Stops with an error: QEMU exits with the matching status; on bare metal
/// the CPU halts.
pub fn fail(reason: FailureExit) -> ! {
    // SAFETY: writing the debug-exit port has no effect where the device is absent.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(reason as u32) };
    halt_forever()
}

/// ACPI soft-off through the PM1a control block where SeaBIOS places it on
/// QEMU's `pc` and `q35` machines; then the debug-exit device; then halt.
pub fn poweroff() -> ! {
    // SAFETY: SLP_TYPa=0 | SLP_EN on PM1a_CNT; ignored where absent.
    unsafe {
        Port::<u16>::new(0x604).write(0x2000);
        Port::<u16>::new(0xb004).write(0x2000);
    }
    halt_forever()
}

/// Resets through the keyboard controller, then by a triple fault.
pub fn reboot() -> ! {
    // SAFETY: pulsing the reset line is this command's purpose.
    unsafe {
        Port::<u8>::new(0xcf9).write(0x06);
        Port::<u8>::new(0x64).write(0xfe);
    }
    super::cpu::triple_fault()
}

pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
