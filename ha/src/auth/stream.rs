//! The replication stream's authentication (stream version 4,
//! `docs/ha-protocol.md` §4a): a handshake when the connection opens, then a
//! trailer with a frame number and a MAC after every frame.
//!
//! Handshake (the connecting node is the initiator I, the accepting one the
//! responder R; all three messages start `magic u32 0x54445341 ("TDSA"),
//! version u8 1, type u8, sender u8, reserved u8 0`):
//! ```text
//! I → R  type 1 Challenge  nonce_I [32]                          40 bytes
//! R → I  type 2 Response   nonce_R [32], proof_R [32]            72 bytes
//! I → R  type 3 Finish     proof_I [32]                          40 bytes
//! ```
//! with the transcript `T = sender_I u8, sender_R u8, nonce_I, nonce_R` and
//! `proof_R = MAC(K, "responder proof" ‖ T)`, `proof_I = MAC(K, "initiator
//! proof" ‖ T)`, where K is the stream key derived from the pair key. Each
//! side's proof answers the other's fresh nonce, so a recorded handshake is
//! worth nothing. The connection's keys are `MAC(K, "initiator to
//! responder" ‖ T)` and `MAC(K, "responder to initiator" ‖ T)`.
//!
//! After the handshake every frame of §4 is followed by its 24-byte trailer
//! `number u64, tag [16]`: `number` counts the sender's frames on this
//! connection from 0, and `tag = Poly1305(frame key, frame)` with the
//! one-time `frame key = MAC(direction key, number)`.
//!
//! Why Poly1305 for the frames and not the keyed BLAKE3 of everything
//! else: every replicated byte is MACed on both nodes, and Poly1305 is one
//! 64-bit multiply-accumulate per 16 bytes, which any CPU and any emulator
//! runs fast; BLAKE3's speed comes from SIMD, which emulators (QEMU's TCG)
//! run several times slower than plain integer code. Under TCG a 4 KiB
//! frame cost 300–400 µs with BLAKE3 (SSE4.1) and a fifth of it with
//! Poly1305 (docs/benchmarks.md). Its key is used for one frame only, as
//! Poly1305 requires: it is derived from the direction key and the frame's
//! number, never repeated on a connection, and the direction keys are fresh
//! for every connection.

use alloc::vec::Vec;
use core::fmt;

use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};

use super::{Key, Keys, MAC_LEN};
use crate::types::NodeId;
use crate::wire::stream as frames;

pub const MAGIC: u32 = 0x5444_5341;
/// 2: frames carry Poly1305 tags (1: keyed BLAKE3 MACs); a node of the
/// other version is refused at its first handshake message.
pub const VERSION: u8 = 2;
pub const CHALLENGE: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const FINISH: u8 = 3;
pub const NONCE_LEN: usize = 32;
pub const CHALLENGE_LEN: usize = 8 + NONCE_LEN;
pub const RESPONSE_LEN: usize = 8 + NONCE_LEN + MAC_LEN;
pub const FINISH_LEN: usize = 8 + MAC_LEN;
/// A frame's Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes after every frame.
pub const TRAILER_LEN: usize = 8 + TAG_LEN;

const RESPONDER_PROOF: &[u8] = b"responder proof";
const INITIATOR_PROOF: &[u8] = b"initiator proof";
const INITIATOR_TO_RESPONDER: &[u8] = b"initiator to responder";
const RESPONDER_TO_INITIATOR: &[u8] = b"responder to initiator";

/// Why a connection was refused or broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamAuthError {
    /// A handshake message that is not what this step expects (magic,
    /// version, type, sender).
    BadHandshake,
    /// The peer's proof is wrong: it does not hold the pair key.
    WrongKey,
    /// A frame header that is not a valid frame (the boundary is lost).
    BadFrame,
    /// A frame whose MAC or number is wrong: forged, altered, replayed,
    /// reordered or dropped.
    BadMac,
}

impl fmt::Display for StreamAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamAuthError::BadHandshake => "not a tandem stream handshake",
            StreamAuthError::WrongKey => "the peer does not hold the pair key",
            StreamAuthError::BadFrame => "malformed frame header",
            StreamAuthError::BadMac => "frame with a wrong MAC or number",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Initiator,
    Responder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Initiator: sent its challenge, waits for the response.
    /// Responder: waits for the challenge.
    First,
    /// Responder: sent its response, waits for the finish.
    Second,
    Done,
    Failed,
}

/// The connection's keys and counters, once the handshake succeeded.
#[derive(Debug)]
pub struct Established {
    pub sealer: FrameSealer,
    pub opener: FrameOpener,
    /// Handshake bytes still to send (the initiator's Finish).
    pending_output: Vec<u8>,
}

/// One side of the handshake, sans-IO: feed it what the connection delivers
/// ([`Handshake::push`]), send what [`Handshake::take_output`] returns.
#[derive(Debug)]
pub struct Handshake {
    side: Side,
    me: NodeId,
    peer: NodeId,
    key: Key,
    nonce: [u8; NONCE_LEN],
    peer_nonce: [u8; NONCE_LEN],
    step: Step,
    input: Vec<u8>,
    output: Vec<u8>,
}

fn header(kind: u8, sender: NodeId) -> [u8; 8] {
    let m = MAGIC.to_be_bytes();
    [m[0], m[1], m[2], m[3], VERSION, kind, sender.to_u8(), 0]
}

impl Handshake {
    /// The connecting side: its challenge is ready to send at once.
    pub fn initiator(keys: &Keys, me: NodeId, peer: NodeId, nonce: [u8; NONCE_LEN]) -> Handshake {
        let mut h = Handshake::new(Side::Initiator, keys, me, peer, nonce);
        h.output.extend_from_slice(&header(CHALLENGE, me));
        h.output.extend_from_slice(&nonce);
        h
    }

    /// The accepting side: speaks only after the challenge.
    pub fn responder(keys: &Keys, me: NodeId, peer: NodeId, nonce: [u8; NONCE_LEN]) -> Handshake {
        Handshake::new(Side::Responder, keys, me, peer, nonce)
    }

    fn new(side: Side, keys: &Keys, me: NodeId, peer: NodeId, nonce: [u8; NONCE_LEN]) -> Handshake {
        Handshake {
            side,
            me,
            peer,
            key: keys.stream.clone(),
            nonce,
            peer_nonce: [0; NONCE_LEN],
            step: Step::First,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Bytes to send now.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.output)
    }

    fn transcript(&self) -> [u8; 2 + 2 * NONCE_LEN] {
        let (initiator, responder, nonce_i, nonce_r) = match self.side {
            Side::Initiator => (self.me, self.peer, &self.nonce, &self.peer_nonce),
            Side::Responder => (self.peer, self.me, &self.peer_nonce, &self.nonce),
        };
        let mut t = [0u8; 2 + 2 * NONCE_LEN];
        t[0] = initiator.to_u8();
        t[1] = responder.to_u8();
        t[2..2 + NONCE_LEN].copy_from_slice(nonce_i);
        t[2 + NONCE_LEN..].copy_from_slice(nonce_r);
        t
    }

    fn established(&self) -> Established {
        let t = self.transcript();
        let to_responder = self.key.derive(INITIATOR_TO_RESPONDER, &[&t]);
        let to_initiator = self.key.derive(RESPONDER_TO_INITIATOR, &[&t]);
        let (send, receive) = match self.side {
            Side::Initiator => (to_responder, to_initiator),
            Side::Responder => (to_initiator, to_responder),
        };
        Established {
            sealer: FrameSealer {
                key: send,
                number: 0,
            },
            opener: FrameOpener {
                key: receive,
                number: 0,
                buffer: Vec::new(),
                start: 0,
                broken: None,
            },
            pending_output: Vec::new(),
        }
    }

    /// Takes received bytes. `Ok(Some((keys, rest)))` once the peer proved it
    /// holds the pair key: `rest` are the bytes that followed the handshake
    /// (the first frames), to be given to the opener. After an error the
    /// connection must be closed.
    pub fn push(
        &mut self,
        bytes: &[u8],
    ) -> Result<Option<(Established, Vec<u8>)>, StreamAuthError> {
        if self.step == Step::Failed {
            return Err(StreamAuthError::BadHandshake);
        }
        self.input.extend_from_slice(bytes);
        let result = self.advance();
        if result.is_err() {
            self.step = Step::Failed;
            self.input = Vec::new();
        }
        result
    }

    fn expect(&self, kind: u8, len: usize) -> Result<Option<Vec<u8>>, StreamAuthError> {
        // Every prefix of the header is checked as it arrives, so a peer
        // that speaks something else is refused before it says much.
        let wanted = header(kind, self.peer);
        let have = self.input.len().min(wanted.len());
        if self.input[..have] != wanted[..have] {
            return Err(StreamAuthError::BadHandshake);
        }
        if self.input.len() < len {
            return Ok(None);
        }
        Ok(Some(self.input[8..len].to_vec()))
    }

    fn advance(&mut self) -> Result<Option<(Established, Vec<u8>)>, StreamAuthError> {
        match (self.side, self.step) {
            (Side::Initiator, Step::First) => {
                let Some(body) = self.expect(RESPONSE, RESPONSE_LEN)? else {
                    return Ok(None);
                };
                let (nonce, proof) = body.split_at(NONCE_LEN);
                let proof: [u8; MAC_LEN] = proof
                    .try_into()
                    .map_err(|_| StreamAuthError::BadHandshake)?;
                self.peer_nonce.copy_from_slice(nonce);
                let t = self.transcript();
                if !self.key.verify(&[RESPONDER_PROOF, &t], &proof) {
                    return Err(StreamAuthError::WrongKey);
                }
                let mine = self.key.mac(&[INITIATOR_PROOF, &t]);
                self.output.extend_from_slice(&header(FINISH, self.me));
                self.output.extend_from_slice(&mine);
                let rest = self.input.split_off(RESPONSE_LEN);
                self.input = Vec::new();
                self.step = Step::Done;
                Ok(Some((self.established(), rest)))
            }
            (Side::Responder, Step::First) => {
                let Some(body) = self.expect(CHALLENGE, CHALLENGE_LEN)? else {
                    return Ok(None);
                };
                self.peer_nonce.copy_from_slice(&body);
                let t = self.transcript();
                let proof = self.key.mac(&[RESPONDER_PROOF, &t]);
                self.output.extend_from_slice(&header(RESPONSE, self.me));
                self.output.extend_from_slice(&self.nonce);
                self.output.extend_from_slice(&proof);
                self.input.drain(..CHALLENGE_LEN);
                self.step = Step::Second;
                self.advance()
            }
            (Side::Responder, Step::Second) => {
                let Some(body) = self.expect(FINISH, FINISH_LEN)? else {
                    return Ok(None);
                };
                let proof: [u8; MAC_LEN] = body
                    .as_slice()
                    .try_into()
                    .map_err(|_| StreamAuthError::BadHandshake)?;
                let t = self.transcript();
                if !self.key.verify(&[INITIATOR_PROOF, &t], &proof) {
                    return Err(StreamAuthError::WrongKey);
                }
                let rest = self.input.split_off(FINISH_LEN);
                self.input = Vec::new();
                self.step = Step::Done;
                Ok(Some((self.established(), rest)))
            }
            _ => Err(StreamAuthError::BadHandshake),
        }
    }
}

/// The Poly1305 tag of the concatenation of `parts` under the one-time key
/// of frame `number`: `MAC(key, number)`.
fn frame_tag(key: &Key, number: u64, parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let one_time = key.mac(&[&number.to_be_bytes()]);
    let mut poly = Poly1305::new(&one_time.into());
    // Whole 16-byte blocks across the parts; the last, partial block is
    // padded as Poly1305 pads a message's end.
    let mut pending = [0u8; 16];
    let mut filled = 0;
    for part in parts {
        let mut rest = *part;
        if filled > 0 {
            let take = rest.len().min(16 - filled);
            pending[filled..filled + take].copy_from_slice(&rest[..take]);
            filled += take;
            rest = &rest[take..];
            if filled < 16 {
                continue;
            }
            poly.update(&[pending.into()]);
        }
        let (blocks, tail) = rest.split_at(rest.len() / 16 * 16);
        for block in blocks.chunks_exact(16) {
            let block: [u8; 16] = block.try_into().unwrap_or([0; 16]);
            poly.update(&[block.into()]);
        }
        pending[..tail.len()].copy_from_slice(tail);
        filled = tail.len();
    }
    poly.compute_unpadded(&pending[..filled]).into()
}

/// Adds the trailer to each frame sent.
#[derive(Debug)]
pub struct FrameSealer {
    key: Key,
    number: u64,
}

impl FrameSealer {
    /// The trailer of the next frame, whose bytes are the concatenation of
    /// `parts` (a frame prefix and the host's data need not be copied
    /// together).
    pub fn trailer(&mut self, parts: &[&[u8]]) -> [u8; TRAILER_LEN] {
        let number = self.number;
        self.number += 1;
        let tag = frame_tag(&self.key, number, parts);
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..8].copy_from_slice(&number.to_be_bytes());
        trailer[8..].copy_from_slice(&tag);
        trailer
    }

    /// The frame followed by its trailer.
    pub fn seal(&mut self, frame: &[u8]) -> Vec<u8> {
        let trailer = self.trailer(&[frame]);
        let mut out = Vec::with_capacity(frame.len() + TRAILER_LEN);
        out.extend_from_slice(frame);
        out.extend_from_slice(&trailer);
        out
    }
}

/// Checks the trailer of each frame received and hands back the frames.
#[derive(Debug)]
pub struct FrameOpener {
    key: Key,
    number: u64,
    buffer: Vec<u8>,
    start: usize,
    broken: Option<StreamAuthError>,
}

impl FrameOpener {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.broken.is_none() {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// The next verified frame (header and payload), `Ok(None)` when more
    /// bytes are needed, or the error that broke the connection.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, StreamAuthError> {
        if let Some(error) = self.broken {
            return Err(error);
        }
        let available = &self.buffer[self.start..];
        if available.len() < frames::HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let total = match frames::frame_len(available) {
            Ok(len) => len,
            Err(_) => return Err(self.break_with(StreamAuthError::BadFrame)),
        };
        if available.len() < total + TRAILER_LEN {
            self.compact();
            return Ok(None);
        }
        let frame = &available[..total];
        let trailer = &available[total..total + TRAILER_LEN];
        let expected = frame_tag(&self.key, self.number, &[frame]);
        if trailer[..8] != self.number.to_be_bytes() || !constant_time_eq(&expected, &trailer[8..])
        {
            return Err(self.break_with(StreamAuthError::BadMac));
        }
        let frame = frame.to_vec();
        self.number += 1;
        self.start += total + TRAILER_LEN;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    fn break_with(&mut self, error: StreamAuthError) -> StreamAuthError {
        self.broken = Some(error);
        self.buffer = Vec::new();
        self.start = 0;
        error
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Whether `a` and `b` are equal, in time that depends on their length only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Connections refused and broken, per reason (shown by `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    pub established: u64,
    pub wrong_key: u64,
    pub bad_handshake: u64,
    pub timeout: u64,
    pub bad_mac: u64,
    pub bad_frame: u64,
}

impl StreamCounters {
    pub fn count(&mut self, error: StreamAuthError) {
        match error {
            StreamAuthError::BadHandshake => self.bad_handshake += 1,
            StreamAuthError::WrongKey => self.wrong_key += 1,
            StreamAuthError::BadFrame => self.bad_frame += 1,
            StreamAuthError::BadMac => self.bad_mac += 1,
        }
    }
}

impl fmt::Display for StreamCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream connections: established {}, refused wrong-key {} bad-handshake {} timeout {}; broken bad-mac {} bad-frame {}",
            self.established,
            self.wrong_key,
            self.bad_handshake,
            self.timeout,
            self.bad_mac,
            self.bad_frame
        )
    }
}

/// One replication connection, sans-IO, from its first byte: the handshake,
/// then sealed frames both ways.
#[derive(Debug)]
pub enum StreamSession {
    Handshaking(Handshake),
    Established(Established),
    Broken(StreamAuthError),
}

/// What [`StreamSession::receive`] found in the bytes received.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The handshake completed with these bytes: the peer is authenticated.
    pub authenticated: bool,
    /// Verified frames, back to back (for the node's stream decoder).
    pub frames: Vec<u8>,
}

impl StreamSession {
    pub fn connect(keys: &Keys, me: NodeId, peer: NodeId, nonce: [u8; NONCE_LEN]) -> StreamSession {
        StreamSession::Handshaking(Handshake::initiator(keys, me, peer, nonce))
    }

    pub fn accept(keys: &Keys, me: NodeId, peer: NodeId, nonce: [u8; NONCE_LEN]) -> StreamSession {
        StreamSession::Handshaking(Handshake::responder(keys, me, peer, nonce))
    }

    pub fn is_established(&self) -> bool {
        matches!(self, StreamSession::Established(_))
    }

    /// Handshake bytes to send now (nothing once established).
    pub fn take_output(&mut self) -> Vec<u8> {
        match self {
            StreamSession::Handshaking(h) => h.take_output(),
            _ => Vec::new(),
        }
    }

    /// Takes received bytes. After an error the connection must be closed.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Received, StreamAuthError> {
        let mut received = Received::default();
        let rest = match self {
            StreamSession::Broken(error) => return Err(*error),
            StreamSession::Handshaking(h) => match h.push(bytes) {
                Ok(None) => return Ok(received),
                Ok(Some((established, rest))) => {
                    // The initiator's finish is still to be sent.
                    let finish = h.take_output();
                    *self = StreamSession::Established(established);
                    received.authenticated = true;
                    if let StreamSession::Established(e) = self {
                        e.pending_output = finish;
                    }
                    rest
                }
                Err(error) => {
                    *self = StreamSession::Broken(error);
                    return Err(error);
                }
            },
            StreamSession::Established(_) => bytes.to_vec(),
        };
        if let StreamSession::Established(e) = self {
            e.opener.push(&rest);
            loop {
                match e.opener.next_frame() {
                    Ok(Some(frame)) => received.frames.extend_from_slice(&frame),
                    Ok(None) => break,
                    Err(error) => {
                        *self = StreamSession::Broken(error);
                        return Err(error);
                    }
                }
            }
        }
        Ok(received)
    }

    /// Bytes owed to the peer from the handshake's end (the initiator's
    /// Finish), to send before any frame.
    pub fn take_finish(&mut self) -> Vec<u8> {
        match self {
            StreamSession::Established(e) => core::mem::take(&mut e.pending_output),
            _ => Vec::new(),
        }
    }

    /// The trailer of the next frame sent (`None` before the handshake
    /// ended: nothing may be sent then).
    pub fn trailer(&mut self, parts: &[&[u8]]) -> Option<[u8; TRAILER_LEN]> {
        match self {
            StreamSession::Established(e) => Some(e.sealer.trailer(parts)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PairKey;
    use crate::types::EpochRecord;
    use crate::wire::stream::{AckStatus, Body, Frame};

    fn keys(byte: u8) -> Keys {
        Keys::derive(&PairKey::from_bytes([byte; 32]))
    }

    /// Runs a handshake between the two sides to its end, delivering each
    /// side's output to the other whole.
    fn run(
        mut i: Handshake,
        mut r: Handshake,
    ) -> (
        Result<Option<(Established, Vec<u8>)>, StreamAuthError>,
        Result<Option<(Established, Vec<u8>)>, StreamAuthError>,
    ) {
        let challenge = i.take_output();
        assert_eq!(challenge.len(), CHALLENGE_LEN);
        let r_first = r.push(&challenge);
        assert!(matches!(r_first, Ok(None)) || r_first.is_err());
        let response = r.take_output();
        let i_done = i.push(&response);
        let finish = i.take_output();
        let r_done = r.push(&finish);
        (i_done, r_done)
    }

    fn ack(seq: u64) -> Vec<u8> {
        Frame {
            sender: NodeId::B,
            epoch: 4,
            seq,
            body: Body::WriteAck {
                status: AckStatus::Ok,
            },
        }
        .emit()
    }

    fn config() -> Vec<u8> {
        Frame {
            sender: NodeId::A,
            epoch: 4,
            seq: 0,
            body: Body::Config(EpochRecord::INITIAL),
        }
        .emit()
    }

    #[test]
    fn a_frame_tag_is_poly1305_of_the_whole_frame_under_its_one_time_key_however_split() {
        let key = keys(1).stream;
        let frame: Vec<u8> = (0..100u8).collect();
        let whole = {
            let one_time = key.mac(&[&7u64.to_be_bytes()]);
            let tag: [u8; TAG_LEN] = Poly1305::new(&one_time.into())
                .compute_unpadded(&frame)
                .into();
            tag
        };
        assert_eq!(frame_tag(&key, 7, &[&frame]), whole);
        for a in 0..frame.len() {
            for b in a..frame.len() {
                let parts: [&[u8]; 4] = [&frame[..a], &[], &frame[a..b], &frame[b..]];
                assert_eq!(frame_tag(&key, 7, &parts), whole, "split at {a}, {b}");
            }
        }
        // Another number, another key, another tag.
        assert_ne!(frame_tag(&key, 8, &[&frame]), whole);
        assert_ne!(frame_tag(&keys(2).stream, 7, &[&frame]), whole);
    }

    #[test]
    fn both_sides_establish_matching_keys() {
        let i = Handshake::initiator(&keys(1), NodeId::A, NodeId::B, [0xaa; 32]);
        let r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [0xbb; 32]);
        let (i_done, r_done) = run(i, r);
        let (mut a, rest_a) = i_done.unwrap().unwrap();
        let (mut b, rest_b) = r_done.unwrap().unwrap();
        assert!(rest_a.is_empty() && rest_b.is_empty());
        // a → b and b → a both verify.
        b.opener.push(&a.sealer.seal(&config()));
        assert_eq!(b.opener.next_frame(), Ok(Some(config())));
        a.opener.push(&b.sealer.seal(&ack(1)));
        assert_eq!(a.opener.next_frame(), Ok(Some(ack(1))));
        assert_eq!(a.opener.next_frame(), Ok(None));
    }

    #[test]
    fn a_wrong_key_is_refused_by_either_side() {
        // A stranger connecting to b.
        let i = Handshake::initiator(&keys(2), NodeId::A, NodeId::B, [0xaa; 32]);
        let r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [0xbb; 32]);
        let (i_done, r_done) = run(i, r);
        assert_eq!(i_done.err(), Some(StreamAuthError::WrongKey));
        // The initiator refuses the response, so never sends its finish.
        assert!(matches!(r_done, Ok(None)));
        // A stranger that forges a finish anyway.
        let mut r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [0xbb; 32]);
        let mut stranger = Handshake::initiator(&keys(2), NodeId::A, NodeId::B, [0xaa; 32]);
        assert!(matches!(r.push(&stranger.take_output()), Ok(None)));
        let mut finish = header(FINISH, NodeId::A).to_vec();
        finish.extend_from_slice(&[0x55; 32]);
        assert_eq!(r.push(&finish).err(), Some(StreamAuthError::WrongKey));
        assert!(r.push(b"more").is_err(), "a failed handshake stays failed");
    }

    #[test]
    fn a_recorded_handshake_cannot_be_replayed() {
        // Record a genuine connection.
        let mut i = Handshake::initiator(&keys(1), NodeId::A, NodeId::B, [0x01; 32]);
        let mut r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [0x02; 32]);
        let challenge = i.take_output();
        r.push(&challenge).unwrap();
        i.push(&r.take_output()).unwrap().unwrap();
        let finish = i.take_output();
        // Replay both of a's messages to a fresh responder: its new nonce
        // makes the recorded finish wrong.
        let mut fresh = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [0x03; 32]);
        fresh.push(&challenge).unwrap();
        assert_eq!(fresh.push(&finish).err(), Some(StreamAuthError::WrongKey));
    }

    #[test]
    fn frames_of_another_connection_or_out_of_order_are_refused() {
        let connect = |nonce: u8| {
            let i = Handshake::initiator(&keys(1), NodeId::A, NodeId::B, [nonce; 32]);
            let r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [nonce + 1; 32]);
            let (i_done, r_done) = run(i, r);
            (i_done.unwrap().unwrap().0, r_done.unwrap().unwrap().0)
        };
        let (mut a1, _) = connect(10);
        let (_, mut b2) = connect(20);
        // Captured on connection 1, injected into connection 2.
        let captured = a1.sealer.seal(&config());
        b2.opener.push(&captured);
        assert_eq!(b2.opener.next_frame(), Err(StreamAuthError::BadMac));

        let (mut a, mut b) = connect(30);
        let first = a.sealer.seal(&config());
        let second = a.sealer.seal(&config());
        b.opener.push(&first);
        assert!(b.opener.next_frame().unwrap().is_some());
        b.opener.push(&first);
        assert_eq!(
            b.opener.next_frame(),
            Err(StreamAuthError::BadMac),
            "replayed frame"
        );
        b.opener.push(&second);
        assert_eq!(
            b.opener.next_frame(),
            Err(StreamAuthError::BadMac),
            "broken for good"
        );

        let (mut a, mut b) = connect(40);
        let _skipped = a.sealer.seal(&config());
        b.opener.push(&a.sealer.seal(&config()));
        assert_eq!(
            b.opener.next_frame(),
            Err(StreamAuthError::BadMac),
            "a dropped frame"
        );
    }

    #[test]
    fn altered_frames_and_headers_are_refused() {
        let i = Handshake::initiator(&keys(1), NodeId::A, NodeId::B, [7; 32]);
        let r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [8; 32]);
        let (i_done, r_done) = run(i, r);
        let mut a = i_done.unwrap().unwrap().0;
        let b_keys = r_done.unwrap().unwrap().0;
        let sealed = a.sealer.seal(&config());
        let mut opener = b_keys.opener;
        // Every single-bit change of the payload or trailer.
        for at in frames::HEADER_LEN..sealed.len() {
            let mut bytes = sealed.clone();
            bytes[at] ^= 0x10;
            let mut o = FrameOpener {
                key: opener.key.clone(),
                number: 0,
                buffer: Vec::new(),
                start: 0,
                broken: None,
            };
            o.push(&bytes);
            assert_eq!(o.next_frame(), Err(StreamAuthError::BadMac), "byte {at}");
        }
        let mut bytes = sealed.clone();
        bytes[0] ^= 1;
        opener.push(&bytes);
        assert_eq!(opener.next_frame(), Err(StreamAuthError::BadFrame));
    }

    #[test]
    fn handshake_messages_split_anywhere_and_frames_following_them() {
        let mut i = Handshake::initiator(&keys(1), NodeId::A, NodeId::B, [5; 32]);
        let mut r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [6; 32]);
        for byte in i.take_output() {
            assert!(r.push(&[byte]).unwrap().is_none());
        }
        let response = r.take_output();
        let mut done = None;
        for byte in response {
            if let Some(d) = i.push(&[byte]).unwrap() {
                done = Some(d);
            }
        }
        let (mut a, _) = done.unwrap();
        // The finish and the first frame arrive together.
        let mut bytes = i.take_output();
        bytes.extend_from_slice(&a.sealer.seal(&config()));
        let (mut b, rest) = r.push(&bytes).unwrap().unwrap();
        b.opener.push(&rest);
        assert_eq!(b.opener.next_frame(), Ok(Some(config())));
    }

    #[test]
    fn a_peer_speaking_something_else_is_refused_at_once() {
        let mut r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [6; 32]);
        // A version-2 stream (no handshake): its first byte already differs
        // from the handshake's magic in the fourth byte.
        assert_eq!(
            r.push(&config()[..4]).err(),
            Some(StreamAuthError::BadHandshake)
        );
        // A challenge claiming to come from b itself or the witness.
        let mut r = Handshake::responder(&keys(1), NodeId::B, NodeId::A, [6; 32]);
        let mut bad = header(CHALLENGE, NodeId::Witness).to_vec();
        bad.extend_from_slice(&[1; 32]);
        assert_eq!(r.push(&bad).err(), Some(StreamAuthError::BadHandshake));
        let _ = Frame::parse(&config()).unwrap();
    }

    #[test]
    fn sessions_carry_frames_after_authenticating_and_count_refusals() {
        let mut a = StreamSession::connect(&keys(1), NodeId::A, NodeId::B, [1; 32]);
        let mut b = StreamSession::accept(&keys(1), NodeId::B, NodeId::A, [2; 32]);
        assert_eq!(b.receive(&a.take_output()), Ok(Received::default()));
        assert!(
            a.trailer(&[&config()]).is_none(),
            "nothing is sent before the handshake"
        );
        let got = a.receive(&b.take_output()).unwrap();
        assert!(got.authenticated && a.is_established() && !b.is_established());
        let mut bytes = a.take_finish();
        let frame = config();
        bytes.extend_from_slice(&frame);
        bytes.extend_from_slice(&a.trailer(&[&frame[..10], &frame[10..]]).unwrap());
        let got = b.receive(&bytes).unwrap();
        assert!(got.authenticated);
        assert_eq!(got.frames, frame);
        // A frame without a trailer breaks the connection, for good.
        let mut counters = StreamCounters::default();
        let error = b.receive(&[config(), config()].concat()).unwrap_err();
        counters.count(error);
        assert_eq!(error, StreamAuthError::BadMac);
        assert!(b.receive(&[]).is_err());
        // A stranger with another key.
        let mut stranger = StreamSession::connect(&keys(9), NodeId::A, NodeId::B, [3; 32]);
        let mut b = StreamSession::accept(&keys(1), NodeId::B, NodeId::A, [4; 32]);
        b.receive(&stranger.take_output()).unwrap();
        let error = stranger.receive(&b.take_output()).unwrap_err();
        assert_eq!(error, StreamAuthError::WrongKey);
        counters.count(error);
        let text = alloc::format!("{counters}");
        assert!(
            text.contains("wrong-key 1") && text.contains("bad-mac 1"),
            "{text}"
        );
    }
}
