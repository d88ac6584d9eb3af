//! The one pseudo-random source of the proof tools and the bench:
//! splitmix64 (Steele, Lea and Flood; the finalizer of `java.util.SplittableRandom`).
//! Seeded and reproducible (a torture run replays from its seed), with no
//! dependency; not for anything that needs unpredictability.

/// The golden-ratio increment of the splitmix64 stream.
pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 output function: a cheap, good 64-bit mixer.
pub fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One splitmix64 step from state `x`: `finalize(x + GAMMA)`. Used as a
/// hash of `x` (stamps, seeds derived from seeds).
pub fn splitmix64(x: u64) -> u64 {
    finalize(x.wrapping_add(GAMMA))
}

/// A splitmix64 stream.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// `finalize(i * GAMMA)`: random access into the stream seeded with 0
    /// (the bench's file contents).
    pub fn at(i: u64) -> u64 {
        finalize(i.wrapping_mul(GAMMA))
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        finalize(self.0)
    }
}

/// A seeded generator with the helpers the torture's op generator needs
/// (its outputs are part of what a torture seed means: keep them).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed ^ 0x6a09_e667_f3bc_c908))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        splitmix64(self.0)
    }
    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // splitmix64 seeded with 0: the published first output.
        assert_eq!(SplitMix(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(SplitMix::at(1), 0xe220_a839_7b1d_cdaf);
        let mut r = Rng::new(7);
        let v: Vec<u64> = (0..100).map(|_| r.below(10)).collect();
        assert!(v.iter().all(|&x| x < 10) && v.iter().any(|&x| x != v[0]));
    }
}
