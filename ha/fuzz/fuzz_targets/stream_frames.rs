//! The replication stream as a data node receives it, on arbitrary bytes:
//! the handshake ([`Handshake`], what an unauthenticated TCP peer reaches
//! first), the per-frame MAC check of an established connection
//! ([`FrameOpener`]), the frame cutter ([`Decoder`]) and the frame decoder
//! ([`Frame::parse`]), fed in pieces of 1 to 128 bytes as TCP might deliver
//! them. Never panics; bytes made without the pair key neither complete the
//! handshake nor pass for a frame; genuine frames come through unchanged;
//! every frame that parses emits to bytes that parse to the same frame.
//!
//! The first byte chooses the pieces' size and how the rest is used: as the
//! bytes on the wire, or as a series of version-1 frames (a length byte,
//! then kind, sender, flags, epoch and sequence number, then the payload;
//! magic, version, length and header checksum filled in) sent over an
//! established connection.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tandem_ha::NodeId;
use tandem_ha::auth::stream::{Established, Handshake};
use tandem_ha::wire::CRC32C;
use tandem_ha::wire::stream::{Decoder, Frame, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};

/// Frames around pieces of `rest`.
fn framed(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let fields = &tail[..tail.len().min(3 + 16)];
        let tail = &tail[fields.len()..];
        let payload = &tail[..tail.len().min(usize::from(len))];
        rest = &tail[payload.len()..];
        let mut frame = vec![0u8; HEADER_LEN];
        frame[..4].copy_from_slice(&MAGIC.to_be_bytes());
        frame[4] = VERSION;
        let (kinds, numbers) = fields.split_at(fields.len().min(3));
        frame[5..5 + kinds.len()].copy_from_slice(kinds);
        frame[8..12].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        frame[16..16 + numbers.len()].copy_from_slice(numbers);
        let crc = CRC32C.checksum(&frame);
        frame[12..16].copy_from_slice(&crc.to_be_bytes());
        frame.extend_from_slice(payload);
        frames.push(frame);
    }
    frames
}

/// Both ends of a connection after the handshake, in memory.
fn connected() -> (Established, Established) {
    let keys = common::keys();
    let mut initiator = Handshake::initiator(&keys, NodeId::A, NodeId::B, [1; 32]);
    let mut responder = Handshake::responder(&keys, NodeId::B, NodeId::A, [2; 32]);
    assert!(
        responder
            .push(&initiator.take_output())
            .expect("challenge")
            .is_none()
    );
    let (a, _) = initiator
        .push(&responder.take_output())
        .expect("response")
        .expect("initiator done");
    let (b, rest) = responder
        .push(&initiator.take_output())
        .expect("finish")
        .expect("responder done");
    assert!(rest.is_empty());
    (a, b)
}

/// Cuts `stream` into frames and decodes each, checking the decoders'
/// promises; returns the frames cut.
fn decode(stream: &[u8], piece: usize) -> Vec<Vec<u8>> {
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    for chunk in stream.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(bytes)) => {
                    if let Ok(frame) = Frame::parse(&bytes) {
                        let emitted = frame.emit();
                        let again = Frame::parse(&emitted).expect("an emitted frame parses");
                        assert_eq!(again, frame);
                    }
                    frames.push(bytes);
                }
                Ok(None) => break,
                // A broken stream stays broken; the connection is reset.
                Err(_) => return frames,
            }
        }
        assert!(
            decoder.buffered() < HEADER_LEN + MAX_PAYLOAD,
            "the decoder holds one frame at most"
        );
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(mode >> 1) + 1;
    if mode & 1 == 0 {
        let keys = common::keys();
        let mut responder = Handshake::responder(&keys, NodeId::B, NodeId::A, [2; 32]);
        for chunk in rest.chunks(piece) {
            match responder.push(chunk) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("a handshake without the key succeeded"),
                Err(_) => break,
            }
        }
        let (_, mut b) = connected();
        for chunk in rest.chunks(piece) {
            b.opener.push(chunk);
            match b.opener.next_frame() {
                Ok(None) => {}
                Ok(Some(_)) => panic!("a frame without the key was accepted"),
                Err(_) => break,
            }
        }
        decode(rest, piece);
        return;
    }
    let frames = framed(rest);
    let (mut a, mut b) = connected();
    let mut stream = Vec::new();
    for frame in &frames {
        stream.extend_from_slice(&a.sealer.seal(frame));
    }
    let mut opened = Vec::new();
    for chunk in stream.chunks(piece) {
        b.opener.push(chunk);
        loop {
            match b.opener.next_frame() {
                Ok(Some(frame)) => opened.push(frame),
                Ok(None) => break,
                // A header the opener refuses: the connection ends there.
                Err(_) => break,
            }
        }
    }
    assert!(opened.len() <= frames.len());
    assert_eq!(
        opened[..],
        frames[..opened.len()],
        "frames come through unchanged"
    );
    let plain: Vec<u8> = opened.concat();
    let cut = decode(&plain, piece);
    assert!(cut.len() <= opened.len());
});
