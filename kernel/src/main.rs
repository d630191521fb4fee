//! The tandem image: brings up the machine and runs the event loop that
//! pumps data between the devices and the protocol crates.
#![no_std]
#![no_main]
// `unsafe` is the hardware layer's alone (and the entry's heap set-up).
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
mod hw;
mod logger;
mod machine;

use core::fmt::Write;

use hw::power::{self, FailureExit};
use hw::serial::EmergencyConsole;
use tandem_boot::BootInfo;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(EmergencyConsole, "\ntandem: panic: {info}");
    power::fail(FailureExit::Panic)
}

/// Entered from `tandem_boot` in long mode (by name).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub fn kernel_main(boot: BootInfo) -> ! {
    hw::serial::init();
    hw::cpu::init_idt();
    hw::clock::calibrate();
    tandem_kernel::profile::install_clock(hw::clock::now_nanos);
    logger::init();

    let Some(heap) = hw::memory::choose_heap(
        boot.usable_memory(),
        tandem_boot::image_start(),
        tandem_boot::image_end(),
    ) else {
        let _ = writeln!(EmergencyConsole, "tandem: no usable RAM above the image");
        power::fail(FailureExit::Config)
    };
    // SAFETY: the region is usable RAM, identity mapped, outside the image
    // and its stack; the loader's structures were copied out already.
    #[allow(unsafe_code)]
    unsafe {
        hw::memory::init_heap(heap)
    };

    let config = match tandem_kernel::config::Config::parse(boot.cmdline())
        .and_then(|c| c.check_consistency().map(|()| c))
    {
        Ok(config) => config,
        Err(error) => {
            println!("tandem: config error: {error}");
            power::fail(FailureExit::Config)
        }
    };
    if boot.cmdline_truncated {
        log::warn!("the command line was longer than 4 KiB and was cut");
    }
    logger::set_level(config.log_level);
    log::info!(
        "tandem {} booting ({:?}, heap {} MiB, TSC {} MHz ±{} ppm)",
        env!("CARGO_PKG_VERSION"),
        boot.protocol,
        (heap.end - heap.start) >> 20,
        hw::clock::tsc_mhz(),
        hw::clock::tsc_error_ppm()
    );
    // The pair's leases assume clocks within 0.1 % of each other's rate.
    match hw::clock::tsc_error_ppm() {
        u64::MAX => log::warn!(
            "the TSC rate could not be measured against the PIT: timers and leases may be off"
        ),
        ppm if ppm > 1000 => {
            log::warn!("the TSC rate is known only within {ppm} ppm: timers and leases may be off")
        }
        _ => {}
    }
    hw::cpu::init_pic();
    machine::Machine::start(config).run()
}
