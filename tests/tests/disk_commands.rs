//! The kernel's virtio-blk driver, driven through NVMe/TCP: Write Zeroes
//! becomes the device's write-zeroes command, Dataset Management Deallocate
//! its discard (QEMU then punches holes in the raw disk file), and a Flush
//! goes to the device beside the writes in flight instead of waiting for
//! them. The console's `status` shows the negotiated features and what the
//! driver handed to the device; without the device's commands the driver
//! falls back to zero-filled writes and skips discards (that VM also has a
//! smaller ring without indirect descriptors).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use tandem_nvme::wire::sqe::SqeBuilder;
use tandem_qemu::{ConsoleClient, Node, TempDir, disk, free_port};
use tandem_tests::nvme::*;
use tandem_tests::{COMMAND_TIMEOUT, READY_TIMEOUT, tcg_vm, user_nic};

const NQN: &str = "nqn.2026-11.io.tandem:disk-commands";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:disk-commands-host";
const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 64 * MIB;

struct Rig {
    node: Node,
    console: ConsoleClient,
    port: u16,
    disk: File,
    _dir: TempDir,
}

/// Boots a VM over a 64 MiB disk whose first `prefilled` bytes hold
/// `pattern(…, 1)`, with `extra` QEMU arguments.
fn boot(name: &str, prefilled: u64, extra: &[&str]) -> Rig {
    let dir = TempDir::new(name).unwrap();
    let path = dir.path().join("disk0.img");
    disk::create_sparse(&path, DISK_BYTES).unwrap();
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    disk.write_all_at(&pattern(prefilled as usize, 1), 0)
        .unwrap();
    disk.sync_all().unwrap();
    let port = free_port().unwrap();
    let mut spec = tcg_vm(name, dir.path(), &format!("nqn={NQN} hosts={HOST}"))
        .disk(&path)
        .nic(0, user_nic(&[(port, 4420)]));
    spec.extra_args.extend(extra.iter().map(|s| s.to_string()));
    let mut node = Node::spawn(spec).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap();
    let console = node.console(COMMAND_TIMEOUT).unwrap();
    let deadline = Instant::now() + READY_TIMEOUT;
    while let Err(e) = Queue::try_open(port, false, false) {
        assert!(Instant::now() < deadline, "no ICResp on port {port}: {e:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Rig {
        node,
        console,
        port,
        disk,
        _dir: dir,
    }
}

impl Rig {
    /// The `disk0` lines of `status`.
    fn disk_status(&mut self) -> String {
        let lines = self
            .console
            .command("status", COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("status: {e}\n{}", self.node.console_log()));
        let start = lines
            .iter()
            .position(|l| l.starts_with("disk0 "))
            .unwrap_or_else(|| panic!("no disk0 line in {lines:#?}"));
        lines[start..=start + 1].join("\n")
    }

    /// A counter of the `disk0` lines of `status`.
    fn counter(&mut self, name: &str) -> u64 {
        let status = self.disk_status();
        let key = format!("{name}=");
        status
            .split_whitespace()
            .find_map(|field| field.strip_prefix(key.as_str()))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    }

    /// An admin queue and `count` I/O queues.
    fn queues(&self, count: u16) -> (Queue, Vec<Queue>) {
        let (mut admin, cntlid) = Queue::admin(self.port, NQN, HOST, 0);
        let cid = admin
            .host
            .set_features(0x07, u32::from(count - 1) | (u32::from(count - 1) << 16));
        admin.ok(cid);
        let io = (1..=count)
            .map(|qid| Queue::io(self.port, qid, cntlid, NQN, HOST, false))
            .collect();
        (admin, io)
    }

    fn file_is_zero(&self, offset: u64, len: u64) -> bool {
        let mut data = vec![1u8; len as usize];
        self.disk.read_exact_at(&mut data, offset).unwrap();
        data.iter().all(|b| *b == 0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.node.console_log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- guest console (tail) ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// A write with Force Unit Access, data in the capsule.
fn fua_write(q: &mut Queue, slba: u64, data: Vec<u8>) -> u16 {
    let cid = q.host.next_cid();
    let sqe = SqeBuilder::new(0x01, cid)
        .nsid(1)
        .cdw(10, slba as u32)
        .cdw(11, (slba >> 32) as u32)
        .cdw(12, (data.len() as u32 / 512 - 1) | (1 << 30))
        .sgl(data.len() as u32, true)
        .build();
    q.host.submit(sqe, Some(data), true);
    cid
}

#[test]
fn write_zeroes_discard_and_flush_use_the_device_commands() {
    let mut rig = boot("disk-commands", 48 * MIB, &[]);
    let status = rig.disk_status();
    for feature in ["flush", "discard", "write-zeroes", "indirect", "event-idx"] {
        assert!(
            status.contains(feature),
            "feature {feature} negotiated: {status}"
        );
    }
    assert!(status.contains("queue=256"), "QEMU's queue size: {status}");
    let (_admin, mut queues) = rig.queues(4);

    // Write Zeroes of 32 MiB (the most one command may ask) over data.
    let zeroes_before = rig.counter("zeroes");
    let (start, blocks) = (4 * MIB / 512, 65536u32);
    let q = &mut queues[0];
    let cid = q.host.write_zeroes(1, start, blocks, false);
    q.ok(cid);
    for slba in [
        start,
        start + u64::from(blocks) / 2,
        start + u64::from(blocks) - 256,
    ] {
        let cid = q.host.read(1, slba, 256, 512);
        assert_eq!(
            q.ok(cid).1,
            vec![0; 128 * 1024],
            "zeroes read back at lba {slba}"
        );
    }
    let cid = q.host.read(1, start - 8, 8, 512);
    assert_eq!(
        q.ok(cid).1,
        pattern(48 * MIB as usize, 1)[(4 * MIB - 4096) as usize..(4 * MIB) as usize],
        "the blocks before the range keep their data"
    );
    assert!(
        rig.file_is_zero(4 * MIB, 32 * MIB),
        "32 MiB of zeroes in the disk file"
    );
    assert!(
        !rig.file_is_zero(36 * MIB, 4096),
        "the data after the range is kept"
    );
    assert!(
        rig.counter("zeroes") > zeroes_before,
        "the device's write-zeroes command was used: {}",
        rig.disk_status()
    );
    assert_eq!(rig.counter("zero_fills"), 0, "no zero-filled writes");

    // Deallocate 8 MiB of written data in two ranges: QEMU punches holes.
    let blocks_before = rig.disk.metadata().unwrap().blocks();
    let discards_before = rig.counter("discards");
    let q = &mut queues[1];
    let cid = q
        .host
        .deallocate(1, &[(40 * MIB / 512, 8192), (44 * MIB / 512, 8192)]);
    q.ok(cid);
    let blocks_after = rig.disk.metadata().unwrap().blocks();
    // The file system may spend a block or two on the split extents.
    assert!(
        blocks_before - blocks_after.min(blocks_before) >= 7 * MIB / 512,
        "8 MiB deallocated: st_blocks {blocks_before} -> {blocks_after}"
    );
    assert!(
        rig.counter("discards") >= discards_before + 2,
        "one discard per range: {}",
        rig.disk_status()
    );
    assert!(
        !rig.file_is_zero(39 * MIB, 4096),
        "the data before the ranges is kept"
    );

    // Write Zeroes with Deallocate: the device may unmap, and QEMU does.
    let blocks_before = rig.disk.metadata().unwrap().blocks();
    let q = &mut queues[2];
    let cid = q.host.write_zeroes(1, 37 * MIB / 512, 4096, true);
    q.ok(cid);
    let cid = q.host.read(1, 37 * MIB / 512, 256, 512);
    assert_eq!(
        q.ok(cid).1,
        vec![0; 128 * 1024],
        "unmapped zeroes read back"
    );
    assert!(
        rig.file_is_zero(37 * MIB, 2 * MIB),
        "2 MiB of zeroes in the disk file"
    );
    assert!(
        !rig.file_is_zero(39 * MIB, 4096),
        "the data after the range is kept"
    );
    let blocks_after = rig.disk.metadata().unwrap().blocks();
    assert!(
        blocks_before - blocks_after.min(blocks_before) >= MIB / 512,
        "2 MiB unmapped: st_blocks {blocks_before} -> {blocks_after}"
    );

    // Many writes in flight on four queues, then a Flush: the flush goes to
    // the device beside the writes (a barrier would wait for them first).
    // The writes of one burst arrive together, so the flush finds writes in
    // flight; a few bursts allow for a slow host splitting them.
    let mut overlapped = false;
    for round in 0..8u64 {
        let base = 8 * MIB / 512 + round * 4096;
        let mut cids = Vec::new();
        for (index, q) in queues.iter_mut().enumerate() {
            let mut mine = Vec::new();
            for n in 0..16u64 {
                let slba = base + (index as u64 * 16 + n) * 16;
                let data = pattern(8192, (round * 64 + index as u64 * 16 + n) as u8);
                mine.push(if n % 4 == 3 {
                    fua_write(q, slba, data)
                } else {
                    q.host.write(1, slba, data, 512, true)
                });
            }
            if index == 0 {
                mine.push(q.host.flush(1));
            }
            q.flush().unwrap();
            cids.push(mine);
        }
        for (q, mine) in queues.iter_mut().zip(cids) {
            for cid in mine {
                q.ok(cid);
            }
        }
        for index in 0..4u64 {
            for n in 0..16u64 {
                let slba = base + (index * 16 + n) * 16;
                let mut data = vec![0; 8192];
                rig.disk.read_exact_at(&mut data, slba * 512).unwrap();
                assert!(
                    data == pattern(8192, (round * 64 + index * 16 + n) as u8),
                    "write at lba {slba} in the disk file"
                );
            }
        }
        if rig.counter("flush_overlaps") > 0 {
            eprintln!(
                "flush beside writes in round {round}: {}",
                rig.disk_status()
            );
            overlapped = true;
            break;
        }
    }
    assert!(
        overlapped,
        "a flush went to the device while writes were in flight: {}",
        rig.disk_status()
    );
}

#[test]
fn without_the_device_commands_zeroes_are_written_and_discards_skipped() {
    let mut rig = boot(
        "disk-fallback",
        16 * MIB,
        &[
            "-global",
            "virtio-blk-pci.write-zeroes=off",
            "-global",
            "virtio-blk-pci.discard=off",
            // The driver's other ring: smaller, three descriptors a request.
            "-global",
            "virtio-blk-pci.queue-size=128",
            "-global",
            "virtio-blk-pci.indirect_desc=off",
        ],
    );
    let status = rig.disk_status();
    assert!(
        !status.contains("write-zeroes") && !status.contains("discard,"),
        "neither offered: {status}"
    );
    assert!(
        status.contains("queue=128") && !status.contains("indirect"),
        "a 128-entry ring without indirect descriptors: {status}"
    );
    let (_admin, mut queues) = rig.queues(1);
    let q = &mut queues[0];
    let cid = q.host.write_zeroes(1, 2048, 8192, false);
    q.ok(cid);
    let cid = q.host.read(1, 2048 + 8192 - 256, 256, 512);
    assert_eq!(q.ok(cid).1, vec![0; 128 * 1024], "zeroes read back");
    assert!(
        rig.file_is_zero(MIB, 4 * MIB),
        "4 MiB of zeroes in the disk file"
    );
    assert!(
        !rig.file_is_zero(5 * MIB, 4096),
        "the data after the range is kept"
    );
    assert!(
        rig.counter("zero_fills") >= 32,
        "4 MiB as 128 KiB writes: {}",
        rig.disk_status()
    );
    assert_eq!(rig.counter("zeroes"), 0);

    let q = &mut queues[0];
    let cid = q.host.deallocate(1, &[(12 * MIB / 512, 2048)]);
    q.ok(cid);
    assert_eq!(rig.counter("discards"), 0, "nothing to discard with");
    assert!(!rig.file_is_zero(12 * MIB, 4096), "the data stays");
}
