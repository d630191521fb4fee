//! NVMe in-band authentication: DH-HMAC-CHAP (NVMe Base 2.0 §8.13, the
//! Authentication Send / Receive commands of §6.2–6.3), controller side.
//!
//! - [`DhchapSecret`]: a secret in the `DHHC-1:…` representation `nvme
//!   gen-dhchap-key` prints; [`DhchapHost`]: one host that must authenticate.
//! - [`crypto`]: the transform, augmented challenge, responses and FFDHE.
//! - [`message`]: the messages' wire format (checked parsing).
//! - [`QueueAuth`]: the transaction on one queue, message by message.
//! - [`Drbg`]: the random bit generator for challenges and DH exponents.
//!
//! See `docs/nvme.md` ("In-band authentication").

pub mod crypto;
pub mod drbg;
mod ffdhe;
pub mod message;
pub mod queue;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use drbg::Drbg;
pub use queue::{AuthContext, AuthFailure, AuthOutcome, Preferences, QueueAuth};

/// Security protocol of DH-HMAC-CHAP in Authentication Send/Receive (SECP).
pub const SECP_DHCHAP: u8 = 0xE9;

/// A hash function identifier (HashID; also the secret's transform field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HashId {
    Sha256 = 1,
    Sha384 = 2,
    Sha512 = 3,
}

impl HashId {
    pub fn from_u8(v: u8) -> Option<HashId> {
        Some(match v {
            1 => HashId::Sha256,
            2 => HashId::Sha384,
            3 => HashId::Sha512,
            _ => return None,
        })
    }
    /// Output length in bytes (the HL of the messages).
    pub fn digest_len(self) -> usize {
        match self {
            HashId::Sha256 => 32,
            HashId::Sha384 => 48,
            HashId::Sha512 => 64,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            HashId::Sha256 => "sha256",
            HashId::Sha384 => "sha384",
            HashId::Sha512 => "sha512",
        }
    }
}

/// A Diffie-Hellman group identifier (DHgID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DhGroup {
    Null = 0,
    Ffdhe2048 = 1,
    Ffdhe3072 = 2,
    Ffdhe4096 = 3,
    Ffdhe6144 = 4,
    Ffdhe8192 = 5,
}

impl DhGroup {
    pub fn from_u8(v: u8) -> Option<DhGroup> {
        Some(match v {
            0 => DhGroup::Null,
            1 => DhGroup::Ffdhe2048,
            2 => DhGroup::Ffdhe3072,
            3 => DhGroup::Ffdhe4096,
            4 => DhGroup::Ffdhe6144,
            5 => DhGroup::Ffdhe8192,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }
    pub fn parse(name: &str) -> Option<DhGroup> {
        (0..=5)
            .filter_map(DhGroup::from_u8)
            .find(|g| g.name() == name)
    }
}

/// Why a `DHHC-1:…` secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    /// Not `DHHC-1:<two digits>:<base64>:`.
    Format,
    /// The transform field is not 00 (none), 01, 02 or 03 (SHA-256/384/512).
    Transform,
    /// The base64 part does not decode.
    Base64,
    /// The key is not 32, 48 or 64 bytes.
    Length,
    /// The CRC-32 after the key does not match it (a mistyped secret).
    Crc,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretError::Format => {
                "a secret must look like DHHC-1:<00..03>:<base64>: (nvme gen-dhchap-key)"
            }
            SecretError::Transform => "the secret's transform field must be 00, 01, 02 or 03",
            SecretError::Base64 => "the secret's key part is not base64",
            SecretError::Length => "the secret's key must be 32, 48 or 64 bytes",
            SecretError::Crc => "the secret's CRC does not match its key (mistyped?)",
        })
    }
}

/// A DH-HMAC-CHAP secret (§8.13.5.8 "secret representation"):
/// `DHHC-1:<t>:<base64 of key ‖ CRC-32(key) little-endian>:` where `t` says
/// how the key is transformed before use (00: not at all; 01/02/03: HMAC
/// with SHA-256/384/512 over the NQN, see [`crypto::transform_key`]).
/// Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct DhchapSecret {
    transform: Option<HashId>,
    key: Vec<u8>,
}

impl fmt::Debug for DhchapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhchapSecret({} bytes, redacted)", self.key.len())
    }
}

static CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl DhchapSecret {
    pub fn parse(text: &str) -> Result<DhchapSecret, SecretError> {
        let rest = text.strip_prefix("DHHC-1:").ok_or(SecretError::Format)?;
        let (t, rest) = rest.split_once(':').ok_or(SecretError::Format)?;
        let b64 = rest.strip_suffix(':').unwrap_or(rest);
        if t.len() != 2 || !t.bytes().all(|b| b.is_ascii_digit()) || b64.contains(':') {
            return Err(SecretError::Format);
        }
        let transform = match t {
            "00" => None,
            "01" | "02" | "03" => HashId::from_u8(t.as_bytes()[1] - b'0'),
            _ => return Err(SecretError::Transform),
        };
        let raw = base64_decode(b64).ok_or(SecretError::Base64)?;
        if !matches!(raw.len(), 36 | 52 | 68) {
            return Err(SecretError::Length);
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        if CRC32.checksum(key).to_le_bytes() != crc {
            return Err(SecretError::Crc);
        }
        Ok(DhchapSecret {
            transform,
            key: key.to_vec(),
        })
    }

    /// The key as used for `nqn` (transformed as the secret says).
    pub fn key_for(&self, nqn: &str) -> Vec<u8> {
        crypto::transform_key(self.transform, &self.key, nqn)
    }
}

/// Standard base64 with padding (RFC 4648 §4); None on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let mut n = 0u32;
        let mut pad = 0;
        for (j, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && j >= 2 => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            if pad > 0 && c != b'=' {
                return None;
            }
            n = n << 6 | u32::from(v);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// One host that must authenticate: `dhchap=<host NQN>,<host secret>[,<controller secret>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhchapHost {
    pub host_nqn: String,
    pub host_secret: DhchapSecret,
    /// With it the controller proves itself to the host when the host asks
    /// (bidirectional authentication).
    pub ctrl_secret: Option<DhchapSecret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_nvme_cli_format_parse() {
        // 32 bytes 0..31, CRC-32 0x91267E8A little-endian (as nvme-cli makes it).
        let s = DhchapSecret::parse("DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:")
            .unwrap();
        assert_eq!(s.key, (0u8..32).collect::<Vec<_>>());
        assert_eq!(s.transform, Some(HashId::Sha256));
        assert_eq!(format!("{s:?}"), "DhchapSecret(32 bytes, redacted)");
        // Without the trailing colon too.
        assert!(
            DhchapSecret::parse("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR")
                .is_ok()
        );
    }

    #[test]
    fn bad_secrets_are_refused_with_the_reason() {
        let good = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR";
        let bad_crc = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaS";
        assert_eq!(
            DhchapSecret::parse(&format!("DHHC-2:01:{good}:")),
            Err(SecretError::Format)
        );
        assert_eq!(
            DhchapSecret::parse(&format!("DHHC-1:04:{good}:")),
            Err(SecretError::Transform)
        );
        assert_eq!(
            DhchapSecret::parse(&format!("DHHC-1:1:{good}:")),
            Err(SecretError::Format)
        );
        assert_eq!(
            DhchapSecret::parse(&format!("DHHC-1:01:{bad_crc}:")),
            Err(SecretError::Crc)
        );
        assert_eq!(
            DhchapSecret::parse("DHHC-1:01:AAEC*wQF:"),
            Err(SecretError::Base64)
        );
        assert_eq!(
            DhchapSecret::parse("DHHC-1:01:AAECAwQF:"),
            Err(SecretError::Length)
        );
    }

    #[test]
    fn base64_handles_padding() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert!(base64_decode("TQ=a").is_none());
        assert!(base64_decode("T===").is_none());
    }
}
