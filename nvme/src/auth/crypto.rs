//! The computations of DH-HMAC-CHAP (NVMe Base 2.0 §8.13.5), as the Linux
//! host and nvmet compute them: the secret transform, the augmented
//! challenge, both responses, and finite-field Diffie-Hellman.

use alloc::vec;
use alloc::vec::Vec;

use crypto_bigint::{BoxedUint, Odd};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::ffdhe;
use super::{DhGroup, HashId};

/// HMAC with `hash` and `key` over the concatenation of `parts`.
pub fn hmac(hash: HashId, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    macro_rules! run {
        ($h:ty) => {{
            // HMAC takes a key of any length: new_from_slice cannot fail.
            let Ok(mut mac) = <Hmac<$h> as Mac>::new_from_slice(key) else {
                unreachable!("HMAC accepts every key length")
            };
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }};
    }
    match hash {
        HashId::Sha256 => run!(Sha256),
        HashId::Sha384 => run!(Sha384),
        HashId::Sha512 => run!(Sha512),
    }
}

/// The plain hash of `data`.
pub fn digest(hash: HashId, data: &[u8]) -> Vec<u8> {
    match hash {
        HashId::Sha256 => Sha256::digest(data).to_vec(),
        HashId::Sha384 => Sha384::digest(data).to_vec(),
        HashId::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// The key a secret gives for one NQN (§8.13.5.7): the secret's key itself
/// when its transform field is 0, otherwise HMAC(key, NQN ‖ "NVMe-over-Fabrics")
/// with the hash the field names.
pub fn transform_key(transform: Option<HashId>, key: &[u8], nqn: &str) -> Vec<u8> {
    match transform {
        None => key.to_vec(),
        Some(h) => hmac(h, key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
    }
}

/// The challenge the response is computed over: C itself without DH, and
/// HMAC(H(session key), C) with it (§8.13.5.3).
pub fn augmented_challenge(hash: HashId, session_key: Option<&[u8]>, challenge: &[u8]) -> Vec<u8> {
    match session_key {
        None => challenge.to_vec(),
        Some(ks) => hmac(hash, &digest(hash, ks), &[challenge]),
    }
}

/// The host's response R1 = HMAC(Kh', Ca ‖ S1 ‖ T_ID ‖ 00h ‖ "HostHost" ‖
/// NQNh ‖ 00h ‖ NQNc).
pub fn host_response(
    hash: HashId,
    transformed_key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    host_nqn: &str,
    subsys_nqn: &str,
) -> Vec<u8> {
    hmac(
        hash,
        transformed_key,
        &[
            challenge,
            &seqnum.to_le_bytes(),
            &tid.to_le_bytes(),
            &[0],
            b"HostHost",
            host_nqn.as_bytes(),
            &[0],
            subsys_nqn.as_bytes(),
        ],
    )
}

/// The controller's response R2 = HMAC(Kc', Ca2 ‖ S2 ‖ T_ID ‖ 00h ‖
/// "Controller" ‖ NQNc ‖ 00h ‖ NQNh).
pub fn controller_response(
    hash: HashId,
    transformed_key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    subsys_nqn: &str,
    host_nqn: &str,
) -> Vec<u8> {
    hmac(
        hash,
        transformed_key,
        &[
            challenge,
            &seqnum.to_le_bytes(),
            &tid.to_le_bytes(),
            &[0],
            b"Controller",
            subsys_nqn.as_bytes(),
            &[0],
            host_nqn.as_bytes(),
        ],
    )
}

/// Compares two byte strings in time independent of where they differ.
pub fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl DhGroup {
    /// The prime, or None for the null group.
    fn prime_hex(self) -> Option<&'static str> {
        Some(match self {
            DhGroup::Null => return None,
            DhGroup::Ffdhe2048 => ffdhe::FFDHE2048,
            DhGroup::Ffdhe3072 => ffdhe::FFDHE3072,
            DhGroup::Ffdhe4096 => ffdhe::FFDHE4096,
            DhGroup::Ffdhe6144 => ffdhe::FFDHE6144,
            DhGroup::Ffdhe8192 => ffdhe::FFDHE8192,
        })
    }

    /// Bytes of a DH value (the size of the prime); 0 for the null group.
    pub fn value_len(self) -> usize {
        self.prime_hex().map_or(0, |h| h.len() / 2)
    }

    /// Bytes of a private exponent: at least twice the group's security
    /// strength (NIST SP 800-56A), rounded up.
    pub fn private_len(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 | DhGroup::Ffdhe3072 => 32,
            DhGroup::Ffdhe4096 => 40,
            DhGroup::Ffdhe6144 => 48,
            DhGroup::Ffdhe8192 => 64,
        }
    }

    fn modulus(self) -> Option<(Odd<BoxedUint>, u32)> {
        let hex = self.prime_hex()?;
        let bits = (hex.len() * 4) as u32;
        let p = BoxedUint::from_be_hex(hex, bits).into_option()?;
        Some((Odd::new(p).into_option()?, bits))
    }

    /// g^x mod p for the group's generator 2 (`base` None) or `base`,
    /// big-endian, padded to the prime's size. None for the null group or
    /// a `base` that is not a valid public value (1 < y < p - 1).
    fn power(self, base: Option<&[u8]>, exponent: &[u8]) -> Option<Vec<u8>> {
        let (p, bits) = self.modulus()?;
        let len = self.value_len();
        let b = match base {
            None => BoxedUint::from_words_with_precision([2], bits),
            Some(y) => {
                if y.len() != len || !self.valid_public(y) {
                    return None;
                }
                BoxedUint::from_be_slice(y, bits).ok()?
            }
        };
        let x = BoxedUint::from_be_slice(exponent, bits).ok()?;
        let r = b.pow_mod(&x, &p);
        let bytes = r.to_be_bytes();
        let mut out = vec![0u8; len];
        let n = bytes.len().min(len);
        out[len - n..].copy_from_slice(&bytes[bytes.len() - n..]);
        Some(out)
    }

    /// Whether `y` (big-endian, the prime's size) lies in 2..=p-2.
    fn valid_public(self, y: &[u8]) -> bool {
        let Some(hex) = self.prime_hex() else {
            return false;
        };
        // p - 1 big-endian: p is odd, so only its last byte changes.
        let mut p_minus_1: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        if let Some(last) = p_minus_1.last_mut() {
            *last -= 1;
        }
        let above_one = y[..y.len() - 1].iter().any(|&b| b != 0) || y[y.len() - 1] > 1;
        above_one && y < p_minus_1.as_slice()
    }

    /// The public value g^x mod p for private exponent `x` (big-endian).
    pub fn public_value(self, x: &[u8]) -> Option<Vec<u8>> {
        self.power(None, x)
    }

    /// The shared secret y^x mod p (padded to the prime's size), or None when
    /// the peer's value `y` is not a valid public value of the group.
    pub fn shared_secret(self, y: &[u8], x: &[u8]) -> Option<Vec<u8>> {
        self.power(Some(y), x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c4f1d2e-9a8b-4c7d-8e6f-5a4b3c2d1e0f";
    const SUBSYS: &str = "nqn.2026-11.io.tandem.test:linux-host";

    // Known answers computed from the Linux algorithm (drivers/nvme/common/auth.c,
    // drivers/nvme/target/auth.c) with an independent implementation
    // (Python's hmac/hashlib and pow), and confirmed by the Linux 6.12 host
    // against the image (tests/linux/tests/dhchap.rs).

    #[test]
    fn transformed_key_and_host_response_without_dh() {
        let key: Vec<u8> = (0u8..32).collect();
        let k = transform_key(Some(HashId::Sha256), &key, HOST);
        assert_eq!(
            k,
            hex("b37903b0d8c86c9f3d0a3ba58f4a9476082d10f6720cb58c8e8ab9c1942e3f9c")
        );
        let c1: Vec<u8> = (0x40u8..0x60).collect();
        let r1 = host_response(
            HashId::Sha256,
            &k,
            &augmented_challenge(HashId::Sha256, None, &c1),
            0x1234_5678,
            0x0102,
            HOST,
            SUBSYS,
        );
        assert_eq!(
            r1,
            hex("6f9a7af51694e7ae5f6be2e47bbd8aeb3793fe79df3e30065ff5ab6ec88abe69")
        );
        assert_eq!(
            transform_key(None, &key, HOST),
            key,
            "transform 00 leaves the key as it is"
        );
    }

    #[test]
    fn ffdhe2048_exchange_and_augmented_responses() {
        let g = DhGroup::Ffdhe2048;
        let (xh, xc) = ([0x11u8; 32], [0x22u8; 32]);
        let yc = g.public_value(&xc).unwrap();
        let yh = g.public_value(&xh).unwrap();
        assert_eq!(
            yc,
            hex(
                "90b185b0080e81c94d3ec9168128b6312d863aeccad8ab29cefec1dda7cfe55161427b91a440f60e20165f41555ed6f114436aeba2409495560f2210a419511081d15685d0248b915219fcdf6bd85aa7491c4e6c12e92146f21b5759aaf18f260f12eb4015f1d9380228e53bef183d807b14e7525738d2f0743b69d0e4a60551bf8135120b9f9af2cd4d6347ea2bbba92eee4ad459c143acb4d4bc5a33071068aada66e30d8701ac57ba05bbe81c0ae48465b6f1568b3f71bbf0c03201531cc67de533ad68ad67161272cec15966779d7a998238d1b5a1f806d094c9ce976a8f7974b5866c0526167ab73303bed6e28c684c141a1b89901e277e3619f93382ae"
            )
        );
        assert_eq!(
            yh,
            hex(
                "352b57f488bd414c29868f65ae6b0211689618954fd20b5361a7a1ebf10270730c04686768c840681599db5ab8254714ee334b08809a14f024d76394c9c59cc4a4a24a8a58eb965b9ae9b5917f0cebc46dedf1cad60f701ae78d87b154a0c632214bed6e57b8d651836efdb27906d77c306c81bbe05db29a98e1417a1760fc9b6ce4168a5827c0a10e14d61f66455b01f16addf36a6ddd9a1ae1b1cac949209b739e331c0e86733934d4131f90b7e63c63fff4c38c572bcae2c151879c29eafd40fc159f95ce20e384f7fc6e08cb93cb6d51228dae663fd9c89ee3330b4e8358c10ebe42248c5ab51056f873175cb7143eda7c1393adb375b04e262d77020251"
            )
        );
        let ks = g.shared_secret(&yh, &xc).unwrap();
        assert_eq!(ks, g.shared_secret(&yc, &xh).unwrap());
        assert_eq!(ks.len(), 256, "padded to the prime's size");
        assert_eq!(
            digest(HashId::Sha384, &ks),
            hex(
                "a3156cf18f0a78b1bbafa3e025be47f42c85577aebd1ed8aac6690e9ba736283b65b48660b266116265f4f401b9b9e51"
            )
        );
        let k = transform_key(Some(HashId::Sha384), &[0x55; 48], HOST);
        let ca1 = augmented_challenge(HashId::Sha384, Some(&ks), &[0x33; 48]);
        assert_eq!(
            host_response(HashId::Sha384, &k, &ca1, 7, 3, HOST, SUBSYS),
            hex(
                "c4fd7139af8e55430372f40add1367d2f5fba3f3926ca0e7655ff7acc3688ec02d376837451d0c8a42f9553f4f2c31fc"
            )
        );
        let kc = transform_key(None, &[0x66; 48], SUBSYS);
        let ca2 = augmented_challenge(HashId::Sha384, Some(&ks), &[0x44; 48]);
        assert_eq!(
            controller_response(HashId::Sha384, &kc, &ca2, 9, 3, SUBSYS, HOST),
            hex(
                "3092f890d35bdcf8e55aca7748ba5be8a35dbc1d2898a1633c3f87108d7144c2563cac22f6d4c6781882b6a191c6debf"
            )
        );
    }

    #[test]
    fn invalid_public_values_are_refused() {
        let g = DhGroup::Ffdhe2048;
        let x = [0x22u8; 32];
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert!(g.shared_secret(&one, &x).is_none(), "1");
        assert!(g.shared_secret(&[0u8; 256], &x).is_none(), "0");
        assert!(g.shared_secret(&[0xFF; 256], &x).is_none(), "above p");
        let mut p_minus_1 = hex(ffdhe::FFDHE2048);
        p_minus_1[255] -= 1;
        assert!(g.shared_secret(&p_minus_1, &x).is_none(), "p - 1");
        assert!(g.shared_secret(&[2u8; 255], &x).is_none(), "short");
        assert!(DhGroup::Null.public_value(&x).is_none());
    }

    #[test]
    fn every_group_is_an_rfc7919_prime_of_its_size() {
        // The RFC's primes all start with 64 one bits and the same 64 bits of
        // e, and end with 64 one bits; the last words before those are the
        // RFC's (a check against a mistyped or wrong X constant).
        let ends = [
            (DhGroup::Ffdhe2048, 2048, "886B423861285C97"),
            (DhGroup::Ffdhe3072, 3072, "25E41D2B66C62E37"),
            (DhGroup::Ffdhe4096, 4096, "C68A007E5E655F6A"),
            (DhGroup::Ffdhe6144, 6144, "A40E329CD0E40E65"),
            (DhGroup::Ffdhe8192, 8192, "D68C8BB7C5C6424C"),
        ];
        for (g, bits, end) in ends {
            let h = g.prime_hex().unwrap();
            assert_eq!(h.len() * 4, bits);
            assert!(h.starts_with("FFFFFFFFFFFFFFFFADF85458A2BB4A9A"), "{bits}");
            assert!(
                h.ends_with(&alloc::format!("{end}FFFFFFFFFFFFFFFF")),
                "{bits}: ...{}",
                &h[h.len() - 40..]
            );
            assert_eq!(g.value_len(), bits / 8);
            // 2^(p-1) = 1 mod p (Fermat), with the crate's arithmetic.
            let mut p_minus_1 = hex(h);
            *p_minus_1.last_mut().unwrap() -= 1;
            let (p, _) = g.modulus().unwrap();
            let e = BoxedUint::from_be_slice(&p_minus_1, bits as u32).unwrap();
            let two = BoxedUint::from_words_with_precision([2], bits as u32);
            assert_eq!(
                two.pow_mod(&e, &p),
                BoxedUint::one_with_precision(bits as u32),
                "{bits}"
            );
        }
    }
}
