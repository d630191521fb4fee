//! `log` output on the console: `[seconds.millis] LEVEL message`.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::hw::clock;

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Libraries' informational chatter (virtio feature lists, DHCP
        // details) only shows at debug level and above.
        if !record.target().starts_with("tandem")
            && record.level() > Level::Warn
            && log::max_level() < LevelFilter::Debug
        {
            return;
        }
        let micros = clock::now_micros();
        crate::println!(
            "[{:5}.{:03}] {:<5} {}",
            micros / 1_000_000,
            micros / 1_000 % 1_000,
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

pub fn init() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}
