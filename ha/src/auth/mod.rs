//! Authentication of the pair's members to one another.
//!
//! Every member holds the same 32-byte **pair key** (`pair_key=` on the
//! kernel command line). Nothing is ever keyed with it directly: [`Keys`]
//! derives one key per purpose with BLAKE3's key derivation mode, so a MAC
//! computed for one purpose is never valid for another. The MACs are keyed
//! BLAKE3 (`blake3::keyed_hash`, a PRF with a 256-bit key and tag), except
//! the replication stream's frames, which carry Poly1305 tags under one-time
//! keys derived with it ([`stream`] says why).
//!
//! Why keyed BLAKE3 and not HMAC-SHA-256: one well-kept `no_std` crate (the
//! BLAKE3 team's reference implementation) gives the MAC and the key
//! derivation with domain separation, and it is several times faster than
//! SHA-256 in software — which matters because every replicated byte is
//! MACed on both nodes, on machines (or emulators) without SHA instructions.
//!
//! - [`channel`]: control datagrams and connection lists (the `v2` formats
//!   of `docs/ha-protocol.md` §3a): MAC, receiver binding, per-boot session
//!   nonces echoed by the receiver, sequence numbers with a window.
//! - [`stream`]: the replication stream's handshake (mutual challenge and
//!   response with fresh nonces, per-connection keys) and its per-frame
//!   Poly1305 tags under one-time keys.

pub mod channel;
pub mod stream;

use core::fmt;

/// Length of the pair key, every derived key and every MAC.
pub const KEY_LEN: usize = 32;
/// Length of a MAC tag.
pub const MAC_LEN: usize = 32;

/// BLAKE3 key-derivation contexts. Part of the protocol: a second
/// implementation must use exactly these strings.
pub mod context {
    pub const CONTROL: &str = "tandem 2026-12 pair control datagrams v2";
    pub const STREAM: &str = "tandem 2026-12 pair replication stream v4";
    pub const NONCE: &str = "tandem 2026-12 pair nonce generator";
}

/// Why a pair key was refused (the text never contains the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not exactly 64 characters.
    Length(usize),
    /// A character that is not a hexadecimal digit, at this position.
    NotHex(usize),
    /// All zeroes: a placeholder, not a key.
    AllZero,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Length(n) => {
                write!(
                    f,
                    "must be 64 hexadecimal digits (32 bytes), got {n} characters"
                )
            }
            KeyError::NotHex(at) => write!(f, "character {} is not a hexadecimal digit", at + 1),
            KeyError::AllZero => write!(f, "is all zeroes; make one with `openssl rand -hex 32`"),
        }
    }
}

/// The pair's shared secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PairKey([u8; KEY_LEN]);

impl PairKey {
    /// Parses 64 hexadecimal digits (either case).
    pub fn from_hex(text: &str) -> Result<PairKey, KeyError> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 * KEY_LEN {
            return Err(KeyError::Length(bytes.len()));
        }
        let digit = |at: usize| -> Result<u8, KeyError> {
            let c = bytes[at];
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(KeyError::NotHex(at)),
            }
        };
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = digit(2 * i)? << 4 | digit(2 * i + 1)?;
        }
        if key.iter().all(|b| *b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(PairKey(key))
    }

    pub fn from_bytes(key: [u8; KEY_LEN]) -> PairKey {
        PairKey(key)
    }
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairKey(<secret>)")
    }
}

/// A derived 32-byte key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

impl Key {
    /// The MAC of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        for part in parts {
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }

    /// Whether `tag` is the MAC of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; MAC_LEN]>::try_from(tag) else {
            return false;
        };
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        for part in parts {
            hasher.update(part);
        }
        // `blake3::Hash`'s equality is constant-time.
        hasher.finalize() == blake3::Hash::from_bytes(tag)
    }

    /// A key derived from this one for one connection or purpose: the MAC of
    /// `label` and `parts`.
    pub fn derive(&self, label: &[u8], parts: &[&[u8]]) -> Key {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(label);
        for part in parts {
            hasher.update(part);
        }
        Key(*hasher.finalize().as_bytes())
    }
}

/// The keys derived from the pair key, one per purpose.
#[derive(Clone, Debug)]
pub struct Keys {
    /// MACs of control datagrams and connection lists.
    pub control: Key,
    /// The replication stream's handshake and connection keys.
    pub stream: Key,
    /// Keys the member's nonce generator, so nonces are unpredictable to
    /// whoever lacks the pair key even where the boot entropy is poor.
    pub nonce: Key,
}

impl Keys {
    pub fn derive(pair_key: &PairKey) -> Keys {
        Keys {
            control: Key(blake3::derive_key(context::CONTROL, &pair_key.0)),
            stream: Key(blake3::derive_key(context::STREAM, &pair_key.0)),
            nonce: Key(blake3::derive_key(context::NONCE, &pair_key.0)),
        }
    }
}

/// Nonces for one boot: the MAC, under the nonce key, of the boot's entropy
/// (whatever the machine offers: a hardware random number, clocks) and a
/// counter. Unique per boot as long as the entropy differs between boots,
/// and unpredictable without the pair key.
#[derive(Debug)]
pub struct NonceSource {
    key: Key,
    counter: u64,
}

impl NonceSource {
    pub fn new(keys: &Keys, entropy: &[u8]) -> NonceSource {
        NonceSource {
            key: keys.nonce.derive(b"boot", &[entropy]),
            counter: 0,
        }
    }

    /// The next 32 bytes.
    pub fn next_bytes(&mut self) -> [u8; 32] {
        self.counter += 1;
        self.key.mac(&[&self.counter.to_be_bytes()])
    }

    /// The next non-zero 64-bit nonce (zero means "none" on the wire).
    pub fn next_u64(&mut self) -> u64 {
        loop {
            let bytes = self.next_bytes();
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            let value = u64::from_be_bytes(first);
            if value != 0 {
                return value;
            }
        }
    }
}

/// Which sequence numbers of one sender's session were seen: the highest,
/// and a bitmap of the [`ReplayWindow::SIZE`] below it. A number is fresh
/// once; a number more than the window below the highest is refused (it
/// could be a replay the window forgot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit `i` set: `highest - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    pub const SIZE: u64 = 128;

    /// Whether `seq` is fresh; marks it seen if so. Zero is never fresh
    /// (senders start at 1).
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= Self::SIZE {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = seq;
            return true;
        }
        let behind = self.highest - seq;
        if behind >= Self::SIZE {
            return false;
        }
        let bit = 1u128 << behind;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    #[test]
    fn pair_keys_parse_and_never_print() {
        let key = PairKey::from_hex(HEX).unwrap();
        assert_eq!(key.0[1], 0x11);
        assert_eq!(key.0[31], 0xff);
        assert_eq!(format!("{key:?}"), "PairKey(<secret>)");
        let keys = Keys::derive(&key);
        let shown = format!("{keys:?}");
        assert!(!shown.contains("0x") && !shown.contains("17"), "{shown}");
        assert_eq!(PairKey::from_hex(&HEX[1..]), Err(KeyError::Length(63)));
        let mut bad = alloc::string::String::from(HEX);
        bad.replace_range(10..11, "g");
        assert_eq!(PairKey::from_hex(&bad), Err(KeyError::NotHex(10)));
        assert_eq!(PairKey::from_hex(&"0".repeat(64)), Err(KeyError::AllZero));
        assert!(!format!("{}", KeyError::NotHex(3)).contains(HEX));
    }

    #[test]
    fn derived_keys_differ_per_purpose_and_per_pair_key() {
        let keys = Keys::derive(&PairKey::from_hex(HEX).unwrap());
        assert_ne!(keys.control, keys.stream);
        assert_ne!(keys.control, keys.nonce);
        let mut other = [7u8; 32];
        other[0] = 8;
        let other = Keys::derive(&PairKey::from_bytes(other));
        assert_ne!(keys.control, other.control);
        // The published derivation: a second implementation gets the same.
        assert_eq!(
            keys.control.0,
            blake3::derive_key(context::CONTROL, &PairKey::from_hex(HEX).unwrap().0)
        );
    }

    #[test]
    fn macs_verify_only_the_same_bytes_under_the_same_key() {
        let keys = Keys::derive(&PairKey::from_hex(HEX).unwrap());
        let tag = keys.control.mac(&[b"head", b"er and payload"]);
        assert!(keys.control.verify(&[b"header and payload"], &tag));
        assert!(!keys.control.verify(&[b"header and payload!"], &tag));
        assert!(!keys.stream.verify(&[b"header and payload"], &tag));
        assert!(!keys.control.verify(&[b"header and payload"], &tag[..31]));
        let mut flipped = tag;
        flipped[5] ^= 1;
        assert!(!keys.control.verify(&[b"header and payload"], &flipped));
    }

    #[test]
    fn nonces_differ_per_boot_entropy_and_call() {
        let keys = Keys::derive(&PairKey::from_hex(HEX).unwrap());
        let mut one = NonceSource::new(&keys, b"boot 1");
        let mut two = NonceSource::new(&keys, b"boot 2");
        let (a, b) = (one.next_u64(), one.next_u64());
        assert_ne!(a, b);
        assert_ne!(a, two.next_u64());
        assert_ne!(one.next_bytes(), two.next_bytes());
    }

    #[test]
    fn replay_window_accepts_each_number_once() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(w.accept(5));
        assert!(w.accept(3), "late but within the window");
        assert!(!w.accept(3));
        assert!(w.accept(2));
        assert!(w.accept(200));
        assert!(!w.accept(5), "too far behind to tell: refused");
        assert!(w.accept(200 - 127));
        assert!(!w.accept(200 - 128));
        assert!(!w.accept(200));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
        assert_eq!(w.highest(), u64::MAX);
    }
}
