//! End to end over real TCP sockets on 127.0.0.1: a small server loop drives
//! `Target`/`Connection` the way the kernel will (non-blocking sockets, block
//! requests completed later and out of order), and the host-side initiator
//! talks to it through blocking sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use common::*;
use tandem_nvme::host::{HostEvent, Initiator};
use tandem_nvme::wire::{Completion, Status};
use tandem_nvme::*;

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<(Target, MemBackend)>>,
}

struct Peer {
    stream: TcpStream,
    conn: Connection,
    /// Bytes read from the socket that the connection did not take yet.
    pending: Vec<u8>,
    /// Block requests executed but not yet completed (completed in reverse).
    deferred: Vec<(RequestId, BlockOutcome)>,
}

impl Server {
    fn start(config: TargetConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let mut target = Target::new(config).unwrap();
            let mut backend = MemBackend::for_target(&target);
            let epoch = StdInstant::now();
            let mut peers: Vec<Peer> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                let now = Instant::from_millis(epoch.elapsed().as_millis() as u64);
                let mut busy = false;
                if let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true).unwrap();
                    s.set_nodelay(true).unwrap();
                    peers.push(Peer {
                        stream: s,
                        conn: Connection::new(&target, now),
                        pending: Vec::new(),
                        deferred: Vec::new(),
                    });
                    busy = true;
                }
                target.poll(now);
                for p in peers.iter_mut() {
                    let mut closed = false;
                    if !p.pending.is_empty() {
                        let n = p.conn.receive(&mut target, now, &p.pending);
                        p.pending.drain(..n);
                    }
                    if p.pending.is_empty() {
                        match p.stream.read(&mut buf) {
                            Ok(0) => closed = true,
                            Ok(n) => {
                                busy = true;
                                let used = p.conn.receive(&mut target, now, &buf[..n]);
                                p.pending.extend_from_slice(&buf[used..n]);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => closed = true,
                        }
                    }
                    while let Some(req) = p.conn.next_block_request() {
                        busy = true;
                        let id = req.id;
                        p.deferred.push((id, backend.execute(req)));
                    }
                    // Complete in reverse order of issue: out-of-order completion.
                    while let Some((id, outcome)) = p.deferred.pop() {
                        p.conn
                            .complete_block(&mut target, now, id, outcome)
                            .unwrap();
                    }
                    p.conn.poll(&mut target, now);
                    loop {
                        let out = p.conn.output();
                        if out.is_empty() {
                            break;
                        }
                        match p.stream.write(out) {
                            Ok(n) => {
                                busy = true;
                                p.conn.consume_output(n);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed || p.conn.wants_close() {
                        let _ = p.stream.shutdown(std::net::Shutdown::Both);
                        p.conn.close(&mut target);
                    }
                }
                peers.retain(|p| p.conn.state() != ConnectionState::Closed);
                if !busy {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            (target, backend)
        });
        Server {
            addr,
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> (Target, MemBackend) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// A blocking host-side queue.
struct Client {
    stream: TcpStream,
    host: Initiator,
    events: Vec<HostEvent>,
}

impl Client {
    fn connect(addr: SocketAddr, hdgst: bool, ddgst: bool) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut c = Client {
            stream,
            host: Initiator::new(hdgst, ddgst),
            events: Vec::new(),
        };
        c.flush();
        let ev = c.next_event();
        assert!(matches!(ev, HostEvent::Initialized { .. }), "{ev:?}");
        c
    }

    fn flush(&mut self) {
        let out = self.host.take_output();
        self.stream.write_all(&out).unwrap();
    }

    fn next_event(&mut self) -> HostEvent {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if let Some(ev) = self
                .host
                .poll_event()
                .expect("well-formed PDUs from the target")
            {
                // R2T: the initiator queued H2CData; send it.
                self.flush();
                return ev;
            }
            let n = self
                .stream
                .read(&mut buf)
                .expect("target answers within the timeout");
            assert!(n > 0, "target closed the connection");
            self.host.feed(&buf[..n]);
        }
    }

    fn wait(&mut self, cid: u16) -> (Completion, Vec<u8>) {
        self.flush();
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid))
            {
                let HostEvent::Completion { cqe, data } = self.events.remove(pos) else {
                    unreachable!()
                };
                return (cqe, data);
            }
            let ev = self.next_event();
            self.events.push(ev);
        }
    }

    fn ok(&mut self, cid: u16) -> (Completion, Vec<u8>) {
        let (cqe, data) = self.wait(cid);
        assert_eq!(cqe.status, Status::SUCCESS, "cid {cid}");
        (cqe, data)
    }
}

fn admin(addr: SocketAddr, digests: bool) -> (Client, u16) {
    let mut a = Client::connect(addr, digests, digests);
    let cid = a
        .host
        .connect(0, 31, 5000, HOSTID, 0xFFFF, SUBNQN, HOSTNQN, false);
    let cntlid = a.ok(cid).0.result as u16;
    let cid = a.host.enable();
    a.ok(cid);
    (a, cntlid)
}

#[test]
fn tcp_end_to_end_multi_queue_with_and_without_digests() {
    let server = Server::start(config());
    for digests in [false, true] {
        let (mut a, cntlid) = admin(server.addr, digests);
        let cid = a.host.identify(1, 0, 0);
        let (_, id) = a.ok(cid);
        assert_eq!(u16::from_le_bytes([id[78], id[79]]), cntlid);
        let cid = a.host.set_features(0x07, 1 | (1 << 16));
        a.ok(cid);
        let mut q1 = Client::connect(server.addr, digests, digests);
        let cid = q1
            .host
            .connect(1, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, false);
        q1.ok(cid);
        let mut q2 = Client::connect(server.addr, digests, digests);
        let cid = q2
            .host
            .connect(2, 127, 0, HOSTID, cntlid, SUBNQN, HOSTNQN, true);
        q2.ok(cid);

        // 32 writes of 4 KiB (in-capsule) and 8 of 128 KiB (R2T) outstanding at once.
        let seed = digests as u8 * 100;
        let mut cids = Vec::new();
        for i in 0..32u64 {
            cids.push(
                q1.host
                    .write(1, i * 8, pattern(4096, seed + i as u8), 512, true),
            );
        }
        for i in 0..8u64 {
            cids.push(q1.host.write(
                2,
                64 + i * 32,
                pattern(131072, seed + 50 + i as u8),
                4096,
                false,
            ));
        }
        for cid in cids {
            q1.ok(cid);
        }
        // Read everything back on the other queue (SUCCESS-flag reads).
        let mut reads = Vec::new();
        for i in 0..32u64 {
            reads.push((
                q2.host.read(1, i * 8, 8, 512),
                pattern(4096, seed + i as u8),
            ));
        }
        for i in 0..8u64 {
            reads.push((
                q2.host.read(2, 64 + i * 32, 32, 4096),
                pattern(131072, seed + 50 + i as u8),
            ));
        }
        for (cid, expect) in reads {
            assert_eq!(q2.ok(cid).1, expect);
        }
        let cid = q1.host.flush(1);
        q1.ok(cid);
        let cid = a.host.simple(0x18, 0);
        a.ok(cid);
        let cid = a.host.get_log_page(0x0C, 0, 4096, 0, 0);
        let (_, ana) = a.ok(cid);
        assert_eq!(u16::from_le_bytes([ana[8], ana[9]]), 2);
    }

    // Discovery on its own connection.
    let mut d = Client::connect(server.addr, false, false);
    let cid = d
        .host
        .connect(0, 31, 0, HOSTID, 0xFFFF, DISCOVERY_NQN, HOSTNQN, false);
    d.ok(cid);
    let cid = d.host.enable();
    d.ok(cid);
    let cid = d.host.get_log_page(0x70, 0, 3072, 0, 0);
    let (_, log) = d.ok(cid);
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 2);

    // A misbehaving peer gets a C2HTermReq and its connection closes; others go on.
    let mut bad = Client::connect(server.addr, false, false);
    bad.host.send_raw(&[0x0C, 0, 24, 0, 24, 0, 0, 0]);
    bad.flush();
    match bad.next_event() {
        HostEvent::Terminated { fes, fei, .. } => assert_eq!((fes, fei), (1, 0)),
        e => panic!("{e:?}"),
    }
    let mut rest = Vec::new();
    let n = bad.stream.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "closed after the termination request");
    let (mut a, _) = admin(server.addr, false);
    let cid = a.host.simple(0x18, 0);
    a.ok(cid);

    let (target, backend) = server.stop();
    assert!(target.stats().write_commands >= 80);
    assert_eq!(&backend.disks[&1][..4096], &pattern(4096, 100)[..]);
}
