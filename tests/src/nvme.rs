//! A blocking NVMe/TCP host over `std::net::TcpStream`, built on the sans-IO
//! initiator of `tandem-nvme` (feature `host`), for tests that drive the
//! booted image through QEMU's port forwards.
//!
//! Every wait is bounded: a queue's socket has a read timeout, and each call
//! that waits for the target takes a deadline.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

pub use tandem_nvme::DISCOVERY_NQN;
pub use tandem_nvme::host::{HostEvent, Initiator};
pub use tandem_nvme::wire::{Completion, Status};

/// How long one exchange with the target may take under TCG on a loaded host.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// The host ID every queue of these tests presents.
pub const HOST_ID: [u8; 16] = *b"tandem-test-host";

/// What went wrong on a queue; tests turn it into a failure message.
#[derive(Debug)]
pub enum QueueError {
    /// The target closed the TCP connection.
    Closed,
    /// Nothing arrived before the deadline.
    Timeout,
    /// A PDU the initiator could not make sense of.
    Protocol(tandem_nvme::Error),
    Io(std::io::Error),
}

/// One NVMe/TCP connection (one NVMe queue) to the target.
pub struct Queue {
    stream: TcpStream,
    pub host: Initiator,
    /// Events received while waiting for something else.
    events: VecDeque<HostEvent>,
    /// What the ICResp said: MAXH2CDATA, header digest, data digest.
    pub icresp: (u32, bool, bool),
}

/// A TCP connection to 127.0.0.1:`port` with bounded reads and writes.
pub fn tcp(port: u16) -> TcpStream {
    tcp_to(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A TCP connection to `address` with bounded reads and writes.
pub fn tcp_to(address: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, REPLY_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

impl Queue {
    /// Connects and exchanges ICReq/ICResp with the requested digests.
    pub fn open(port: u16, header_digest: bool, data_digest: bool) -> Queue {
        Self::try_open(port, header_digest, data_digest)
            .unwrap_or_else(|e| panic!("ICReq on 127.0.0.1:{port}: {e:?}"))
    }

    pub fn try_open(
        port: u16,
        header_digest: bool,
        data_digest: bool,
    ) -> Result<Queue, QueueError> {
        Self::try_open_over(tcp(port), header_digest, data_digest)
    }

    /// ICReq/ICResp over a connection the caller made (to any address).
    pub fn try_open_over(
        stream: TcpStream,
        header_digest: bool,
        data_digest: bool,
    ) -> Result<Queue, QueueError> {
        let mut queue = Queue::unopened_to(stream, header_digest, data_digest);
        queue.flush()?;
        match queue.next_event(Instant::now() + REPLY_TIMEOUT)? {
            HostEvent::Initialized {
                maxh2cdata,
                header_digest,
                data_digest,
            } => {
                queue.icresp = (maxh2cdata, header_digest, data_digest);
                Ok(queue)
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
    }

    /// A connection whose ICReq is queued in `host` but not sent: for tests
    /// that send bytes their own way.
    pub fn unopened(port: u16, header_digest: bool, data_digest: bool) -> Queue {
        Self::unopened_to(tcp(port), header_digest, data_digest)
    }

    /// Like [`Queue::unopened`], over a connection the caller made.
    pub fn unopened_to(stream: TcpStream, header_digest: bool, data_digest: bool) -> Queue {
        Queue {
            stream,
            host: Initiator::new(header_digest, data_digest),
            events: VecDeque::new(),
            icresp: (0, false, false),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Sends what the initiator queued.
    pub fn flush(&mut self) -> Result<(), QueueError> {
        let out = self.host.take_output();
        self.stream.write_all(&out).map_err(QueueError::Io)
    }

    /// Sends `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), QueueError> {
        self.flush()?;
        self.stream.write_all(bytes).map_err(QueueError::Io)
    }

    /// The next PDU from the target (R2T-solicited data is sent on the way).
    pub fn next_event(&mut self, deadline: Instant) -> Result<HostEvent, QueueError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if let Some(event) = self.host.poll_event().map_err(QueueError::Protocol)? {
                // After an R2T the initiator queued H2CData: send it now.
                self.flush()?;
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QueueError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(QueueError::Io)?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(QueueError::Closed),
                Ok(n) => self.host.feed(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(QueueError::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(QueueError::Closed),
                Err(e) => return Err(QueueError::Io(e)),
            }
        }
    }

    /// Waits for the completion of command `cid`; other events are kept.
    pub fn try_wait(
        &mut self,
        cid: u16,
        timeout: Duration,
    ) -> Result<(Completion, Vec<u8>), QueueError> {
        self.flush()?;
        let deadline = Instant::now() + timeout;
        let matches =
            |e: &HostEvent| matches!(e, HostEvent::Completion { cqe, .. } if cqe.cid == cid);
        if let Some(pos) = self.events.iter().position(matches)
            && let Some(HostEvent::Completion { cqe, data }) = self.events.remove(pos)
        {
            return Ok((cqe, data));
        }
        let mut kept = Vec::new();
        let result = loop {
            match self.next_event(deadline) {
                Ok(HostEvent::Completion { cqe, data }) if cqe.cid == cid => break Ok((cqe, data)),
                Ok(HostEvent::R2T { .. }) => {}
                Ok(other) => kept.push(other),
                Err(e) => break Err(e),
            }
        };
        self.events.extend(kept);
        result
    }

    /// The completion of `cid`; panics if none comes in time.
    pub fn wait(&mut self, cid: u16) -> (Completion, Vec<u8>) {
        self.try_wait(cid, REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("no completion for command {cid}: {e:?}"))
    }

    /// The completion of `cid`, which must be successful.
    pub fn ok(&mut self, cid: u16) -> (Completion, Vec<u8>) {
        let (cqe, data) = self.wait(cid);
        assert_eq!(
            cqe.status,
            Status::SUCCESS,
            "status of command {cid}: {cqe:?}"
        );
        (cqe, data)
    }

    /// The status `cid` completed with.
    pub fn status(&mut self, cid: u16) -> Status {
        self.wait(cid).0.status
    }

    /// Waits for a C2HTermReq, then for the target to close the connection.
    /// Returns (FES, FEI).
    pub fn expect_termination(&mut self) -> (u16, u32) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let (fes, fei) = loop {
            match self.next_event(deadline) {
                Ok(HostEvent::Terminated { fes, fei, .. }) => break (fes, fei),
                Ok(_) => {}
                Err(e) => panic!("expected a C2HTermReq, got {e:?}"),
            }
        };
        self.expect_closed(REPLY_TIMEOUT);
        (fes, fei)
    }

    /// Waits until the target closes the connection (bytes on the way are
    /// discarded).
    pub fn expect_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the target did not close the connection within {timeout:?}"
            );
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Closes the TCP connection without an NVMe goodbye.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Fabrics Connect of queue `qid` and its status and result.
    pub fn connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        kato_ms: u32,
        subnqn: &str,
        hostnqn: &str,
    ) -> (Status, u32) {
        let sqsize = if qid == 0 { 31 } else { 127 };
        let cid = self.host.connect(
            qid, sqsize, kato_ms, HOST_ID, cntlid, subnqn, hostnqn, false,
        );
        let (cqe, _) = self.wait(cid);
        (cqe.status, cqe.result as u32)
    }

    /// Connects the admin queue and enables the controller the way Linux
    /// does. Returns the queue and its CNTLID.
    pub fn admin(port: u16, subnqn: &str, hostnqn: &str, kato_ms: u32) -> (Queue, u16) {
        Self::admin_over(tcp(port), subnqn, hostnqn, kato_ms)
    }

    /// [`Queue::admin`] over a connection the caller made.
    pub fn admin_over(
        stream: TcpStream,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
    ) -> (Queue, u16) {
        let queue =
            Queue::try_open_over(stream, false, false).unwrap_or_else(|e| panic!("ICReq: {e:?}"));
        Self::enable_admin(queue, subnqn, hostnqn, kato_ms)
    }

    /// Connects an opened queue (ICReq done) as the admin queue and enables
    /// the controller the way Linux does. Returns the queue and its CNTLID.
    pub fn enable_admin(
        mut queue: Queue,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
    ) -> (Queue, u16) {
        let (status, result) = queue.connect(0, 0xFFFF, kato_ms, subnqn, hostnqn);
        assert_eq!(
            status,
            Status::SUCCESS,
            "admin Connect to {subnqn} as {hostnqn}"
        );
        let cntlid = result as u16;
        let cid = queue.host.enable();
        queue.ok(cid);
        (queue, cntlid)
    }

    /// Connects I/O queue `qid` of controller `cntlid`.
    pub fn io(
        port: u16,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        digests: bool,
    ) -> Queue {
        let mut queue = Queue::open(port, digests, digests);
        let (status, _) = queue.connect(qid, cntlid, 0, subnqn, hostnqn);
        assert_eq!(
            status,
            Status::SUCCESS,
            "I/O queue {qid} Connect to controller {cntlid}"
        );
        queue
    }

    /// Identify with CNS `cns`; panics unless it succeeds.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Vec<u8> {
        let cid = self.host.identify(cns, nsid, 0);
        let (_, data) = self.ok(cid);
        assert_eq!(data.len(), 4096, "Identify CNS {cns:#x} returns 4 KiB");
        data
    }

    /// Get Log Page `lid` of `len` bytes; panics unless it succeeds.
    pub fn log_page(&mut self, lid: u8, len: u32) -> Vec<u8> {
        let cid = self.host.get_log_page(lid, 0, len, 0, 0xFFFF_FFFF);
        self.ok(cid).1
    }
}

/// Little-endian field readers for Identify and log page data.
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// An ASCII field with its padding (spaces or NULs) removed.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Namespace identification descriptors (Identify CNS 03h): (NIDT, NID).
pub fn ns_descriptors(list: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= list.len() && list[at] != 0 {
        let (kind, len) = (list[at], list[at + 1] as usize);
        out.push((kind, list[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

/// A deterministic byte pattern for write/read-back checks.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 32) as u8
                ^ seed
        })
        .collect()
}
