//! A stand-alone node: host I/O to the local disks.

use tandem_nvme::wire::Status;

use super::fakes::{FakeDisk, Network};
use super::{Host, NQN, Node, World, pattern};

const ADDRESS: [u8; 4] = [10, 77, 0, 1];

fn world() -> (World, FakeDisk) {
    let mut network = Network::default();
    let disk = FakeDisk::new(4 << 20);
    let cmdline = format!("net0=10.77.0.1/24 nqn={NQN} status_port=0");
    let node = Node::boot(&mut network, 1, &cmdline, &[0], vec![disk.clone()], 0);
    let host = Host::new(&mut network, 0, "10.77.0.9/24", 0);
    (
        World {
            now: 0,
            network,
            nodes: vec![node],
            host,
        },
        disk,
    )
}

#[test]
fn a_write_reaches_the_disk_and_a_read_brings_it_back() {
    let (mut world, disk) = world();
    let (_, cntlid) = world.admin_queue(ADDRESS);
    let io = world.io_queue(ADDRESS, cntlid, 1);
    let data = pattern(8192, 1);
    let cid = world.initiator(io).write(1, 16, data.clone(), 512, false);
    world.ok(io, cid);
    assert_eq!(disk.read(16 * 512, 8192), data, "the write is on the disk");

    let cid = world.initiator(io).read(1, 16, 16, 512);
    let (_, read) = world.ok(io, cid);
    assert_eq!(read, data, "the read brings back what was written");
}

#[test]
fn completions_reach_the_connection_that_asked() {
    let (mut world, disk) = world();
    let (_, cntlid) = world.admin_queue(ADDRESS);
    let first = world.io_queue(ADDRESS, cntlid, 1);
    let second = world.io_queue(ADDRESS, cntlid, 2);
    let (one, two) = (pattern(4096, 1), pattern(4096, 2));
    {
        let mut state = disk.0.borrow_mut();
        state.bytes[0..4096].copy_from_slice(&one);
        state.bytes[65536..65536 + 4096].copy_from_slice(&two);
        // Both reads wait at the disk, which then finishes the later first.
        state.held = true;
        state.reverse = true;
    }
    let cid_one = world.initiator(first).read(1, 0, 8, 512);
    let cid_two = world.initiator(second).read(1, 128, 8, 512);
    world.run_until(5, "both reads at the disk", |_| disk.queued() == 2);
    // The same command id on both connections: only the connection tells them apart.
    assert_eq!(cid_one, cid_two);
    world.run_for_millis(20);
    assert!(
        !world.completed(first, cid_one) && !world.completed(second, cid_two),
        "nothing completes before the disk"
    );
    // The console shows each command at the disk, and that nothing waits
    // in a socket or in the connection.
    let node = &world.nodes[0];
    let text = node.nvme.as_ref().unwrap().describe(&node.nets);
    let waiting = text
        .lines()
        .filter(|l| {
            l.contains("outstanding=1") && l.ends_with("tcp=ESTABLISHED sendq=0 recvq=0 unsent=0")
        })
        .count();
    assert_eq!(waiting, 2, "{text}");
    disk.hold(false);
    let (_, read_one) = world.ok(first, cid_one);
    let (_, read_two) = world.ok(second, cid_two);
    assert_eq!(read_one, one, "the first connection gets its own block");
    assert_eq!(read_two, two, "the second connection gets its own block");
}

#[test]
fn a_disk_error_becomes_the_nvme_status_of_its_command() {
    let (mut world, disk) = world();
    let (_, cntlid) = world.admin_queue(ADDRESS);
    let io = world.io_queue(ADDRESS, cntlid, 1);
    disk.0.borrow_mut().fail_reads = true;
    let cid = world.initiator(io).read(1, 0, 8, 512);
    let (cqe, _) = world.completion(io, cid);
    assert_eq!(cqe.status, Status::UNRECOVERED_READ_ERROR);

    disk.0.borrow_mut().fail_reads = false;
    disk.0.borrow_mut().fail_writes = true;
    let cid = world
        .initiator(io)
        .write(1, 0, pattern(4096, 3), 512, false);
    let (cqe, _) = world.completion(io, cid);
    assert_eq!(cqe.status, Status::WRITE_FAULT);

    // The connection goes on serving.
    disk.0.borrow_mut().fail_writes = false;
    let cid = world
        .initiator(io)
        .write(1, 0, pattern(4096, 4), 512, false);
    world.ok(io, cid);
}
