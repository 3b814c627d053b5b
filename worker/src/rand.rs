//! A small per-thread pseudo-random generator for ids and retry jitter. Not for secrets.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mix in the address of a stack value so threads started in the same nanosecond differ.
    let local = 0u8;
    (t ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// Next pseudo-random 64-bit value (xorshift64*).
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A number in [0, 1).
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `len` lowercase hex digits.
pub fn hex(len: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(len);
    let mut bits = 0u64;
    for i in 0..len {
        if i % 16 == 0 {
            bits = next_u64();
        }
        out.push(DIGITS[(bits & 0xf) as usize] as char);
        bits >>= 4;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_has_the_right_shape_and_varies() {
        let a = super::hex(24);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, super::hex(24));
        let u = super::unit();
        assert!((0.0..1.0).contains(&u));
    }
}
