//! Command handling: arbitrary submission queue entries (and in-capsule
//! data) on a connected, enabled admin queue and an I/O queue. Every command
//! gets exactly one well-formed answer; nothing panics.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tandem_nvme::host::{HostEvent, Initiator};
use tandem_nvme::*;

fn pump(conn: &mut Connection, host: &mut Initiator, t: &mut Target) -> Vec<HostEvent> {
    let now = Instant::from_millis(0);
    let mut events = Vec::new();
    for _ in 0..64 {
        let out = host.take_output();
        let n = conn.receive(t, now, &out);
        if n < out.len() {
            host.send_raw(&out[n..]);
        }
        while let Some(req) = conn.next_block_request() {
            let outcome = match req.op {
                BlockOp::Read { len, .. } => BlockOutcome::ReadData(vec![0; len as usize]),
                _ => BlockOutcome::Done,
            };
            conn.complete_block(t, now, req.id, outcome).unwrap();
        }
        conn.poll(t, now);
        let mut buf = vec![0u8; 1 << 20];
        let n = conn.write_output(&mut buf);
        host.feed(&buf[..n]);
        let mut any = n > 0;
        while let Ok(Some(ev)) = host.poll_event() {
            events.push(ev);
            any = true;
        }
        if !any && !host.has_output() {
            break;
        }
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let mut t = common::target();
    let nqn = t.config().subsystem_nqn.clone();
    let host_nqn = "nqn.2014-08.org.nvmexpress:uuid:fuzz";
    let mut admin = Connection::new(&t, Instant::from_millis(0));
    let mut ha = Initiator::new(false, false);
    ha.connect(0, 31, 0, [1; 16], 0xFFFF, &nqn, host_nqn, false);
    let ev = pump(&mut admin, &mut ha, &mut t);
    let Some(cntlid) = ev.iter().find_map(|e| match e {
        HostEvent::Completion { cqe, .. } => Some(cqe.result as u16),
        _ => None,
    }) else {
        panic!("connect failed")
    };
    ha.enable();
    pump(&mut admin, &mut ha, &mut t);
    let mut io = Connection::new(&t, Instant::from_millis(0));
    let mut hi = Initiator::new(false, false);
    hi.connect(1, 127, 0, [1; 16], cntlid, &nqn, host_nqn, false);
    pump(&mut io, &mut hi, &mut t);

    // Each 64-byte chunk is a command; a first byte decides queue and data.
    for chunk in data.chunks(66) {
        if chunk.len() < 66 {
            break;
        }
        let mut sqe = [0u8; 64];
        sqe.copy_from_slice(&chunk[2..66]);
        let on_io = chunk[0] & 1 != 0;
        let data_len = (chunk[1] as usize) * 16;
        let (conn, host) = if on_io {
            (&mut io, &mut hi)
        } else {
            (&mut admin, &mut ha)
        };
        if conn.state() != ConnectionState::Open {
            break;
        }
        let write = if data_len > 0 {
            Some(vec![0xA5; data_len])
        } else {
            None
        };
        host.submit(sqe, write, true);
        for ev in pump(conn, host, &mut t) {
            if let HostEvent::Terminated { .. } = ev {
                return;
            }
        }
    }
    let _ = t.set_ana_state(1, AnaState::Inaccessible);
    pump(&mut admin, &mut ha, &mut t);
});
