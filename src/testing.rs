//! Test-only helpers shared by unit tests: a small deterministic generator, so the property
//! tests need no extra crate and fail the same way every run.

/// xorshift64: deterministic for a seed, good enough to explore inputs.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next pseudo-random number.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
