//! COM1: console output (log lines, command output) and console input.

use core::fmt;

use spin::Mutex;
use uart_16550::Uart16550;
use uart_16550::backend::PioBackend;

const COM1_PORT: u16 = 0x3f8;
/// Legacy IRQ line of COM1.
pub const COM1_IRQ: u8 = 4;

static COM1: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Initialises COM1 (115200 8N1) with the receive interrupt enabled, so that
/// a keystroke wakes an idle machine. Without a UART (bare metal without a
/// serial port) output is dropped.
pub fn init() {
    // SAFETY: COM1's eight I/O ports belong to this driver alone.
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1_PORT) }) else {
        return;
    };
    if uart.init(uart_16550::Config::default()).is_err() {
        return;
    }
    uart.enable_interrupts(uart_16550::spec::registers::IER::DATA_READY);
    *COM1.lock() = Some(uart);
}

fn write_bytes(uart: &mut Uart16550<PioBackend>, text: &str) {
    // Terminals want CR LF; logs read the same either way.
    for (index, part) in text.split('\n').enumerate() {
        if index > 0 {
            uart.send_bytes_exact(b"\r\n");
        }
        uart.send_bytes_exact(part.as_bytes());
    }
}

/// Writes text to the console.
pub fn write_str(text: &str) {
    if let Some(uart) = COM1.lock().as_mut() {
        write_bytes(uart, text);
    }
}

/// Reads one waiting input byte, if any.
pub fn try_read() -> Option<u8> {
    COM1.lock()
        .as_mut()
        .and_then(|uart| uart.try_receive_byte().ok())
}

/// `fmt::Write` onto the console.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        write_str(text);
        Ok(())
    }
}

/// Writes to COM1 without the lock, for the panic and exception paths where
/// the lock may be held by the code that failed.
pub struct EmergencyConsole;

impl fmt::Write for EmergencyConsole {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // SAFETY: the machine is stopping; a torn line is better than silence.
        if let Ok(mut uart) = unsafe { Uart16550::new_port(COM1_PORT) } {
            write_bytes(&mut uart, text);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::hw::serial::Console, format_args!($($arg)*));
    }};
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}
