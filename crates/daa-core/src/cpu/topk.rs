//! The k largest values of a row, found by filtering and batch selection:
//! values above the current threshold are appended (branch-free) to a buffer
//! of about 2k; when it fills, a selection keeps the k largest and raises the
//! threshold to the k-th. Each candidate costs O(1) amortised, against
//! O(log k) with unpredictable branches for a heap.

use super::lanes::LANES;

/// The `k` largest values offered so far (values only: the statistics do
/// not need token ids).
#[derive(Debug, Clone, Default)]
pub(crate) struct TopK {
    k: usize,
    /// Buffer with room for `capacity + LANES` values; `len` are live.
    buf: Vec<f32>,
    len: usize,
    capacity: usize,
    threshold: f32,
}

impl TopK {
    /// Empties the buffer and sets `k`; `k = 0` keeps nothing.
    pub(crate) fn reset(&mut self, k: usize) {
        self.k = k;
        self.len = 0;
        self.capacity = (2 * k).max(64);
        if self.buf.len() < self.capacity + LANES {
            self.buf.resize(self.capacity + LANES, 0.0);
        }
        self.threshold = if k == 0 { f32::INFINITY } else { f32::NEG_INFINITY };
    }

    /// A value must exceed this to be kept: −inf until the buffer first
    /// fills (so −inf values, probability 0, are never kept), +inf when
    /// `k = 0`, else the k-th largest value kept so far.
    #[inline(always)]
    pub(crate) fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Offers every value of `block`; chunks of [`LANES`] are tested with one
    /// vector compare, and qualifying chunks appended without branches.
    #[inline(always)]
    pub(crate) fn offer_block(&mut self, block: &[f32]) {
        let (chunks, tail) = block.as_chunks::<LANES>();
        for chunk in chunks {
            let mut any = false;
            for &x in chunk {
                any |= x > self.threshold;
            }
            if any {
                let t = self.threshold;
                let dst = &mut self.buf[self.len..self.len + LANES];
                let mut n = 0;
                for &x in chunk {
                    dst[n] = x;
                    n += usize::from(x > t);
                }
                self.len += n;
                if self.len >= self.capacity {
                    self.compact();
                }
            }
        }
        for &x in tail {
            if x > self.threshold {
                self.buf[self.len] = x;
                self.len += 1;
                if self.len >= self.capacity {
                    self.compact();
                }
            }
        }
    }

    /// Keeps the k largest live values and raises the threshold to the k-th.
    fn compact(&mut self) {
        if self.len <= self.k {
            return;
        }
        let live = &mut self.buf[..self.len];
        live.select_nth_unstable_by(self.k - 1, |a, b| b.total_cmp(a));
        self.len = self.k;
        self.threshold = live[self.k - 1];
    }

    /// The kept values, unordered: the `k` largest offered, or fewer when
    /// fewer than `k` finite values were offered (the others have probability 0).
    pub(crate) fn values(&mut self) -> &[f32] {
        self.compact();
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::TopK;

    fn top_of(values: &[f32], k: usize) -> Vec<f32> {
        let mut top = TopK::default();
        top.reset(k);
        top.offer_block(values);
        let mut kept = top.values().to_vec();
        kept.sort_by(|a, b| b.total_cmp(a));
        kept
    }

    #[test]
    fn keeps_the_k_largest_across_compactions() {
        let values: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32).collect();
        assert_eq!(top_of(&values, 3), vec![999.0, 998.0, 997.0]);
        let want: Vec<f32> = (0..100).map(|i| (999 - i) as f32).collect();
        assert_eq!(top_of(&values, 100), want);
    }

    #[test]
    fn never_keeps_minus_infinity_and_k_zero_keeps_nothing() {
        let values = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 5.0];
        assert_eq!(top_of(&values, 4), vec![5.0, 1.0]);
        assert!(top_of(&values, 0).is_empty());
    }
}
