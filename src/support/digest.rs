//! A content hash that never changes between builds or Rust releases
//! (unlike `std`'s `DefaultHasher`): 64-bit FNV-1a. It names content in
//! ETags and checksums cache files. It is not cryptographic: it detects
//! accidents (bit flips, truncation, edits of a file that was ours), not an
//! adversary who can write the cache directory.
//!
//! Any single changed byte changes the hash: each step XORs a byte into the
//! state and multiplies by an odd number, both bijections.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental FNV-1a 64 hasher.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(OFFSET)
    }
}

impl Fnv64 {
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
        self.0 = h;
        self
    }

    /// Adds a length-prefixed field, so that the boundaries between fields
    /// are part of the hash (`"ab","c"` differs from `"a","bc"`).
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.update(&(bytes.len() as u64).to_le_bytes())
            .update(bytes)
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv64(bytes: &[u8]) -> u64 {
    Fnv64::default().update(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_single_bit_flip_changes_the_hash() {
        let text = br#"{"name":"qemu-system-x86_64","devices":["virtio-blk-pci"]}"#;
        let base = fnv64(text);
        for i in 0..text.len() {
            for bit in 0..8 {
                let mut t = text.to_vec();
                t[i] ^= 1 << bit;
                assert_ne!(fnv64(&t), base, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn fields_keep_their_boundaries() {
        let a = Fnv64::default().field(b"ab").field(b"c").finish();
        let b = Fnv64::default().field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
    }
}
