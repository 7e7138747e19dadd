//! The rows pandas' `DataFrame.sample(n, random_state=seed)` picks, so that a classification run can
//! balance and split its data exactly as the book's chapter 6 code does (`create_balanced_dataset`,
//! `random_split`): the same training, validation and test texts, hence the same padded length (the
//! longest training text) and comparable accuracies.
//!
//! pandas draws with numpy's legacy `RandomState(seed).choice(len, n, replace=False)`, which is
//! `permutation(len)[:n]`: a Fisher-Yates shuffle of `0..len` from the last position down, each
//! position swapped with one drawn by rejection from masked Mersenne Twister (MT19937) outputs.

/// numpy's legacy `RandomState` generator: MT19937 seeded by `init_genrand` (a seed below 2^32).
pub struct RandomState {
    mt: [u32; 624],
    next: usize,
}

impl RandomState {
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        RandomState { mt, next: 624 }
    }

    fn refill(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % 624] & LOWER);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.mt[i] = self.mt[(i + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.next >= 624 {
            self.refill();
        }
        let mut y = self.mt[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform value in `0..=max` (numpy's `random_interval`).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        loop {
            let v = if max <= u64::from(u32::MAX) {
                u64::from(self.next_u32()) & mask
            } else {
                ((u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())) & mask
            };
            if v <= max {
                return v;
            }
        }
    }

    /// `permutation(n)`: `0..n` shuffled.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// The positions `DataFrame.sample(n, random_state=seed)` takes from `len` rows, in its order.
pub fn sample(len: usize, n: usize, seed: u32) -> Vec<usize> {
    let mut p = RandomState::new(seed).permutation(len);
    p.truncate(n);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_mt19937() {
        // The reference implementation's first outputs for init_genrand(5489) (mt19937ar.c).
        let mut r = RandomState::new(5489);
        let first: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(first, [3_499_211_612, 581_869_302, 3_890_346_734]);
        // The 10,000th output of the default seed (C++11's std::mt19937 requirement).
        let mut r = RandomState::new(5489);
        let last = (0..10_000).map(|_| r.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }
}
