//! A connection fed arbitrary bytes in arbitrary splits: never panics, never
//! holds more than its bounds, and ends in a sane state.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tandem_nvme::*;

fuzz_target!(|data: &[u8]| {
    let mut t = common::target();
    let mut conn = Connection::new(&t, Instant::from_millis(0));
    let (splits, bytes) = data.split_at(data.len().min(8));
    let mut off = 0;
    let mut i = 0;
    let mut now = 0;
    while off < bytes.len() {
        let step = splits.get(i % splits.len().max(1)).copied().unwrap_or(255) as usize + 1;
        let end = (off + step).min(bytes.len());
        let n = conn.receive(&mut t, Instant::from_millis(now), &bytes[off..end]);
        off += n;
        common::service(&mut conn, &mut t, Instant::from_millis(now));
        if n == 0 && conn.receive(&mut t, Instant::from_millis(now), &bytes[off..end]) == 0 {
            break;
        }
        now += 1;
        i += 1;
    }
    conn.close(&mut t);
    assert_eq!(t.controllers().count(), 0, "closing frees the controller");
});
