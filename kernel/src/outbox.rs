//! The replication stream's outbox: what waits to go into the stream's
//! socket, as chunks — frame headers the pair made, write data shared with
//! the local disk request (never copied here), runs of zeroes — rather
//! than bytes.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::block::WriteData;

/// Zeroes sent from here, a slice at a time.
static ZEROES: [u8; 4096] = [0; 4096];

/// `len` zero bytes as slices of a static buffer (for what reads a run of
/// zeroes without its being allocated: a MAC).
pub fn zeroes<'a>(len: usize) -> impl Iterator<Item = &'a [u8]> {
    (0..len.div_ceil(ZEROES.len()))
        .map(move |index| &ZEROES[..(len - index * ZEROES.len()).min(ZEROES.len())])
}

/// One piece of the stream.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes made for the stream (frames, frame headers).
    Bytes(Vec<u8>),
    /// A write's data, shared with the disk request that writes it.
    Shared(WriteData),
    /// This many zero bytes.
    Zeroes(usize),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Bytes(bytes) => bytes.len(),
            Chunk::Shared(data) => data.len(),
            Chunk::Zeroes(len) => *len,
        }
    }
}

#[derive(Debug, Default)]
pub struct Outbox {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    sent: usize,
}

impl Outbox {
    pub fn push(&mut self, chunk: Chunk) {
        if chunk.len() > 0 {
            self.chunks.push_back(chunk);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Chunk::len).sum::<usize>() - self.sent
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.sent = 0;
    }

    /// The next bytes to send (empty when nothing waits).
    pub fn front(&self) -> &[u8] {
        match self.chunks.front() {
            None => &[],
            Some(Chunk::Bytes(bytes)) => &bytes[self.sent..],
            Some(Chunk::Shared(data)) => &data[self.sent..],
            Some(Chunk::Zeroes(len)) => &ZEROES[..(len - self.sent).min(ZEROES.len())],
        }
    }

    /// `sent` bytes of [`Outbox::front`] went out.
    pub fn advance(&mut self, sent: usize) {
        self.sent += sent;
        if let Some(front) = self.chunks.front()
            && self.sent >= front.len()
        {
            debug_assert_eq!(
                self.sent,
                front.len(),
                "more sent than the front chunk held"
            );
            self.chunks.pop_front();
            self.sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use alloc::vec;

    /// Drains the outbox `step` bytes at a time at most, as a socket with
    /// little room would take them.
    fn drain(outbox: &mut Outbox, step: usize) -> Vec<u8> {
        let mut stream = Vec::new();
        while !outbox.is_empty() {
            let front = outbox.front();
            let n = front.len().min(step);
            stream.extend_from_slice(&front[..n]);
            outbox.advance(n);
        }
        stream
    }

    #[test]
    fn chunks_go_out_in_order_whatever_the_socket_takes_at_a_time() {
        for step in [1, 3, 100, 5000, usize::MAX] {
            let mut outbox = Outbox::default();
            let data: WriteData = Rc::new((0..=255u8).cycle().take(1000).collect());
            outbox.push(Chunk::Bytes(vec![1, 2, 3]));
            outbox.push(Chunk::Shared(data.clone()));
            outbox.push(Chunk::Zeroes(5000));
            outbox.push(Chunk::Bytes(vec![9]));
            assert_eq!(outbox.len(), 3 + 1000 + 5000 + 1);
            let stream = drain(&mut outbox, step);
            let mut expected = vec![1, 2, 3];
            expected.extend_from_slice(&data);
            expected.extend(core::iter::repeat_n(0, 5000));
            expected.push(9);
            assert_eq!(stream, expected, "step {step}");
            assert_eq!(outbox.len(), 0);
        }
    }

    #[test]
    fn shared_data_is_the_disk_request_s_own_buffer() {
        let data: WriteData = Rc::new(vec![7; 4096]);
        let mut outbox = Outbox::default();
        outbox.push(Chunk::Shared(data.clone()));
        assert_eq!(
            outbox.front().as_ptr(),
            data.as_ptr(),
            "sent from the shared buffer, not a copy"
        );
        assert_eq!(Rc::strong_count(&data), 2);
        outbox.advance(4096);
        assert_eq!(Rc::strong_count(&data), 1, "released once sent");
    }

    #[test]
    fn zeroes_come_as_static_slices_of_the_right_total() {
        for len in [0, 1, 4095, 4096, 4097, 10_000] {
            let slices: Vec<&[u8]> = zeroes(len).collect();
            assert_eq!(slices.iter().map(|s| s.len()).sum::<usize>(), len);
            assert!(
                slices
                    .iter()
                    .all(|s| !s.is_empty() && s.iter().all(|b| *b == 0))
            );
        }
    }

    #[test]
    fn empty_chunks_and_clear_leave_nothing_to_send() {
        let mut outbox = Outbox::default();
        outbox.push(Chunk::Bytes(Vec::new()));
        outbox.push(Chunk::Zeroes(0));
        assert!(outbox.is_empty() && outbox.front().is_empty());
        outbox.push(Chunk::Zeroes(10));
        outbox.advance(4);
        outbox.clear();
        assert!(outbox.is_empty() && outbox.len() == 0);
    }
}
