//! HMAC_DRBG with SHA-256 (NIST SP 800-90A §10.1.2, without prediction
//! resistance): the challenges and Diffie-Hellman exponents of
//! authentication come from it. The caller seeds it with entropy from the
//! hardware ([`Drbg::reseed`]); it never runs out.

use super::HashId;
use super::crypto::hmac;

pub struct Drbg {
    key: [u8; 32],
    value: [u8; 32],
}

impl core::fmt::Debug for Drbg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Drbg(redacted)")
    }
}

impl Drbg {
    /// A generator instantiated from `seed` (entropy ‖ nonce ‖ personalisation).
    pub fn new(seed: &[u8]) -> Drbg {
        let mut d = Drbg {
            key: [0; 32],
            value: [1; 32],
        };
        d.update(seed);
        d
    }

    /// Mixes more entropy in.
    pub fn reseed(&mut self, entropy: &[u8]) {
        self.update(entropy);
    }

    fn update(&mut self, provided: &[u8]) {
        for round in [0u8, 1] {
            if round == 1 && provided.is_empty() {
                break;
            }
            let k = hmac(
                HashId::Sha256,
                &self.key,
                &[&self.value, &[round], provided],
            );
            self.key.copy_from_slice(&k);
            let v = hmac(HashId::Sha256, &self.key, &[&self.value]);
            self.value.copy_from_slice(&v);
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(32) {
            let v = hmac(HashId::Sha256, &self.key, &[&self.value]);
            self.value.copy_from_slice(&v);
            chunk.copy_from_slice(&self.value[..chunk.len()]);
        }
        self.update(&[]);
    }

    pub fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_differ_and_depend_on_the_seed() {
        let mut a = Drbg::new(b"seed one");
        let mut b = Drbg::new(b"seed two");
        let (mut x, mut y, mut z) = ([0u8; 40], [0u8; 40], [0u8; 40]);
        a.fill(&mut x);
        a.fill(&mut y);
        b.fill(&mut z);
        assert_ne!(x, y);
        assert_ne!(x, z);
        let mut a2 = Drbg::new(b"seed one");
        let mut x2 = [0u8; 40];
        a2.fill(&mut x2);
        assert_eq!(x, x2, "deterministic for one seed");
    }
}
