//! Test harness: a target, connections driven by host-side initiators, and an
//! in-memory block backend.
#![allow(dead_code)]

use std::collections::HashMap;

use tandem_nvme::host::{HostEvent, Initiator};
use tandem_nvme::wire::{Completion, Status};
use tandem_nvme::*;

pub const SUBNQN: &str = "nqn.2026-11.dev.tandem:test";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:host-a";
pub const HOSTID: [u8; 16] = [7; 16];
pub const NS1_BLOCKS: u64 = 4096; // 2 MiB of 512 B blocks
pub const NS2_BLOCKS: u64 = 1024; // 4 MiB of 4 KiB blocks

pub fn config() -> TargetConfig {
    let mut c = TargetConfig::new(SUBNQN);
    c.serial = "SN-TEST".into();
    c.model = "tandem test".into();
    c.cntlid_min = 0x10;
    c.cntlid_max = 0x1F;
    c.ana_groups = vec![(1, AnaState::Optimized), (2, AnaState::Optimized)];
    c.namespaces = vec![
        NamespaceConfig {
            nsid: 1,
            blocks: NS1_BLOCKS,
            lba_shift: 9,
            nguid: [0x11; 16],
            uuid: [0x21; 16],
            ana_group: 1,
        },
        NamespaceConfig {
            nsid: 2,
            blocks: NS2_BLOCKS,
            lba_shift: 12,
            nguid: [0x12; 16],
            uuid: [0x22; 16],
            ana_group: 2,
        },
    ];
    c.portals = vec![Portal {
        port_id: 1,
        address: PortalAddress::V4([10, 0, 0, 1]),
        port: 4420,
    }];
    c.peer_portals = vec![Portal {
        port_id: 2,
        address: PortalAddress::V4([10, 0, 0, 2]),
        port: 4420,
    }];
    c
}

/// Namespaces as byte vectors.
#[derive(Default)]
pub struct MemBackend {
    pub disks: HashMap<u32, Vec<u8>>,
    pub flushes: u32,
    pub fua_writes: u32,
    pub deallocated: Vec<ByteRange>,
}

impl MemBackend {
    pub fn for_target(t: &Target) -> Self {
        let mut b = MemBackend::default();
        for ns in &t.config().namespaces {
            b.disks
                .insert(ns.nsid, vec![0u8; (ns.blocks << ns.lba_shift) as usize]);
        }
        b
    }

    pub fn execute(&mut self, req: BlockRequest) -> BlockOutcome {
        let disk = self.disks.get_mut(&req.nsid).expect("namespace exists");
        match req.op {
            BlockOp::Read { offset, len } => BlockOutcome::ReadData(
                disk[offset as usize..offset as usize + len as usize].to_vec(),
            ),
            BlockOp::Write {
                offset,
                data,
                force_unit_access,
            } => {
                if force_unit_access {
                    self.fua_writes += 1;
                }
                disk[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                BlockOutcome::Done
            }
            BlockOp::Flush => {
                self.flushes += 1;
                BlockOutcome::Done
            }
            BlockOp::WriteZeroes { offset, len, .. } => {
                disk[offset as usize..(offset + len) as usize].fill(0);
                BlockOutcome::Done
            }
            BlockOp::Deallocate { ranges } => {
                for r in &ranges {
                    disk[r.offset as usize..(r.offset + r.len) as usize].fill(0);
                }
                self.deallocated.extend(ranges);
                BlockOutcome::Done
            }
        }
    }
}

/// One connection plus its host side.
pub struct Link {
    pub conn: Connection,
    pub host: Initiator,
    pub events: Vec<HostEvent>,
    /// Block requests held back (when `auto_complete` is off).
    pub held: Vec<BlockRequest>,
    pub auto_complete: bool,
    /// Bytes of target output handed to the host per step (None: all).
    pub chunk: Option<usize>,
    pub host_error: Option<Error>,
}

pub struct Harness {
    pub target: Target,
    pub backend: MemBackend,
    pub now: u64,
}

impl Harness {
    pub fn new(config: TargetConfig) -> Self {
        let target = Target::new(config).expect("valid config");
        let backend = MemBackend::for_target(&target);
        Harness {
            target,
            backend,
            now: 1000,
        }
    }

    pub fn default() -> Self {
        Self::new(config())
    }

    pub fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    pub fn link(&mut self, hdgst: bool, ddgst: bool) -> Link {
        Link {
            conn: Connection::new(&self.target, self.now()),
            host: Initiator::new(hdgst, ddgst),
            events: Vec::new(),
            held: Vec::new(),
            auto_complete: true,
            chunk: None,
            host_error: None,
        }
    }

    /// Moves bytes both ways and executes block requests until nothing moves.
    pub fn pump(&mut self, l: &mut Link) {
        for _ in 0..10_000 {
            let mut moved = false;
            let out = l.host.take_output();
            if !out.is_empty() {
                let n = feed_all(
                    &mut l.conn,
                    &mut self.target,
                    Instant::from_millis(self.now),
                    &out,
                    l.chunk,
                );
                moved |= n > 0;
                if n < out.len() {
                    // Not all consumed: give the rest back to the host side.
                    let mut rest = out[n..].to_vec();
                    rest.extend(l.host.take_output());
                    l.host.send_raw(&rest);
                }
            }
            while let Some(req) = l.conn.next_block_request() {
                moved = true;
                if l.auto_complete {
                    let id = req.id;
                    let outcome = self.backend.execute(req);
                    l.conn
                        .complete_block(
                            &mut self.target,
                            Instant::from_millis(self.now),
                            id,
                            outcome,
                        )
                        .expect("known request");
                } else {
                    l.held.push(req);
                }
            }
            l.conn
                .poll(&mut self.target, Instant::from_millis(self.now));
            let mut buf = vec![0u8; l.chunk.unwrap_or(1 << 20)];
            loop {
                let n = l.conn.write_output(&mut buf);
                if n == 0 {
                    break;
                }
                moved = true;
                l.host.feed(&buf[..n]);
            }
            loop {
                match l.host.poll_event() {
                    Ok(Some(ev)) => {
                        moved = true;
                        l.events.push(ev)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        l.host_error = Some(e);
                        break;
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Completes held block requests (in the given order of indices).
    pub fn complete_held(&mut self, l: &mut Link, order: &[usize]) {
        let reqs: Vec<BlockRequest> = std::mem::take(&mut l.held);
        let mut slots: Vec<Option<BlockRequest>> = reqs.into_iter().map(Some).collect();
        for &i in order {
            let req = slots[i].take().expect("each once");
            let id = req.id;
            let outcome = self.backend.execute(req);
            l.conn
                .complete_block(
                    &mut self.target,
                    Instant::from_millis(self.now),
                    id,
                    outcome,
                )
                .expect("known");
        }
        l.held = slots.into_iter().flatten().collect();
    }

    /// Waits for the completion of `cid`.
    pub fn wait(&mut self, l: &mut Link, cid: u16) -> (Completion, Vec<u8>) {
        self.pump(l);
        let pos = l
            .events
            .iter()
            .position(|e| matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid))
            .unwrap_or_else(|| {
                panic!(
                    "no completion for cid {cid}; events {:?}; state {:?} {:?}",
                    l.events,
                    l.conn.state(),
                    l.conn.error()
                )
            });
        match l.events.remove(pos) {
            HostEvent::Completion { cqe, data } => (cqe, data),
            _ => unreachable!(),
        }
    }

    pub fn expect_status(
        &mut self,
        l: &mut Link,
        cid: u16,
        status: Status,
    ) -> (Completion, Vec<u8>) {
        let (cqe, data) = self.wait(l, cid);
        assert_eq!(cqe.status, status, "cid {cid}");
        (cqe, data)
    }

    pub fn ok(&mut self, l: &mut Link, cid: u16) -> (Completion, Vec<u8>) {
        self.expect_status(l, cid, Status::SUCCESS)
    }

    /// ICReq/ICResp.
    pub fn initialize(&mut self, l: &mut Link) {
        self.pump(l);
        assert!(
            matches!(l.events.first(), Some(HostEvent::Initialized { .. })),
            "no ICResp: {:?} {:?}",
            l.events,
            l.conn.error()
        );
        l.events.remove(0);
    }

    /// A connected, enabled admin queue; returns the CNTLID.
    pub fn admin(&mut self, l: &mut Link, kato_ms: u32) -> u16 {
        self.admin_for(l, kato_ms, SUBNQN, HOSTNQN)
    }

    pub fn admin_for(&mut self, l: &mut Link, kato_ms: u32, subnqn: &str, hostnqn: &str) -> u16 {
        self.initialize(l);
        let cid = l
            .host
            .connect(0, 31, kato_ms, HOSTID, 0xFFFF, subnqn, hostnqn, false);
        let (cqe, _) = self.ok(l, cid);
        let cntlid = cqe.result as u16;
        let cid = l.host.enable();
        self.ok(l, cid);
        cntlid
    }

    /// An I/O queue of controller `cntlid`.
    pub fn io_queue(&mut self, l: &mut Link, cntlid: u16, qid: u16, sqflow_disabled: bool) {
        self.initialize(l);
        let cid = l.host.connect(
            qid,
            127,
            0,
            HOSTID,
            cntlid,
            SUBNQN,
            HOSTNQN,
            sqflow_disabled,
        );
        self.ok(l, cid);
    }

    /// Admin queue plus one I/O queue.
    pub fn setup(&mut self) -> (Link, Link, u16) {
        let mut a = self.link(false, false);
        let cntlid = self.admin(&mut a, 10_000);
        let cid = a.host.set_features(0x07, 3 | (3 << 16));
        self.ok(&mut a, cid);
        let mut q = self.link(false, false);
        self.io_queue(&mut q, cntlid, 1, false);
        (a, q, cntlid)
    }

    pub fn terminated(&mut self, l: &mut Link) -> (u16, u32) {
        self.pump(l);
        let t = l.events.iter().find_map(|e| match e {
            HostEvent::Terminated { fes, fei, .. } => Some((*fes, *fei)),
            _ => None,
        });
        let t = t.unwrap_or_else(|| {
            panic!(
                "no termination; events {:?} state {:?}",
                l.events,
                l.conn.state()
            )
        });
        assert!(l.conn.wants_close(), "connection must ask to be closed");
        t
    }
}

/// Feeds bytes to the connection (in chunks of `chunk` if given), the way a
/// socket loop would. Returns how many were consumed.
pub fn feed_all(
    conn: &mut Connection,
    t: &mut Target,
    now: Instant,
    data: &[u8],
    chunk: Option<usize>,
) -> usize {
    let step = chunk.unwrap_or(data.len()).max(1);
    let mut off = 0;
    while off < data.len() {
        let start = off;
        let end = (start + step).min(data.len());
        let n = conn.receive(t, now, &data[start..end]);
        off += n;
        if n < end - start {
            break;
        }
    }
    off
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8 ^ seed)
        .collect()
}
