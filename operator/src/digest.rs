//! Hex encoding and sha256 digests, in one place: child names, the spec-hash annotation, the
//! config hash that rolls the workers and the generated vLLM key all go through here, so they
//! share one encoding (lowercase hex, two characters a byte) and cannot drift apart.
//!
//! A leaf module: it depends on nothing else in the crate.

use sha2::{Digest, Sha256};

/// Lowercase hex, two characters a byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// sha256 of `bytes` as 64 lowercase hex characters.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The first `hex_chars` characters of [`sha256_hex`]: a short, stable name part. Names built
/// from it are compared across operator versions, so the prefix (not some other reduction) is
/// part of the contract.
pub fn sha256_hex_prefix(bytes: &[u8], hex_chars: usize) -> String {
    let mut s = sha256_hex(bytes);
    s.truncate(hex_chars);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2 test vector: sha256("abc").
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sha256_matches_the_published_vector() {
        assert_eq!(sha256_hex(b"abc"), ABC_SHA256);
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
    }

    #[test]
    fn prefix_is_the_start_of_the_full_digest() {
        assert_eq!(sha256_hex_prefix(b"abc", 10), "ba7816bf8f");
        assert_eq!(sha256_hex_prefix(b"abc", 32), &ABC_SHA256[..32]);
        assert_eq!(sha256_hex_prefix(b"abc", 100), ABC_SHA256);
    }
}
