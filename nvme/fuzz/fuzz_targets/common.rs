//! Shared set-up for the connection fuzz targets.
use tandem_nvme::*;

pub fn target() -> Target {
    let mut c = TargetConfig::new("nqn.2026-11.dev.tandem:fuzz");
    c.namespaces = vec![
        NamespaceConfig {
            nsid: 1,
            blocks: 256,
            lba_shift: 9,
            nguid: [1; 16],
            uuid: [2; 16],
            ana_group: 1,
        },
        NamespaceConfig {
            nsid: 2,
            blocks: 64,
            lba_shift: 12,
            nguid: [3; 16],
            uuid: [4; 16],
            ana_group: 1,
        },
    ];
    c.limits.data_budget = 256 * 1024;
    Target::new(c).expect("valid")
}

/// Executes block requests against zeroed storage, and drains output,
/// checking the bounds the connection promises.
#[allow(dead_code)]
pub fn service(conn: &mut Connection, t: &mut Target, now: Instant) {
    let mut guard = 0;
    while let Some(req) = conn.next_block_request() {
        let outcome = match req.op {
            BlockOp::Read { len, .. } => BlockOutcome::ReadData(vec![0; len as usize]),
            _ => BlockOutcome::Done,
        };
        conn.complete_block(t, now, req.id, outcome)
            .expect("known request");
        guard += 1;
        assert!(guard < 100_000);
    }
    let mut sink = [0u8; 4096];
    while conn.write_output(&mut sink) > 0 {}
    conn.poll(t, now);
    assert!(conn.info().outstanding <= 128 + 4);
}
