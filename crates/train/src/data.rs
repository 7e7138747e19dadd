//! The book's data pipeline (chapter 2, `GPTDatasetV1` and `create_dataloader_v1`).
//!
//! Token ids are cut into windows of `max_length` inputs, each paired with the same window shifted
//! by one as targets, starting every `stride` tokens. A loader groups windows into batches, in order
//! or shuffled with a seed, dropping an incomplete last batch when asked (training) or keeping it
//! (evaluation).
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::sync::Arc;

/// Token ids held in memory, or memory-mapped shards (see [`crate::shards`]).
pub enum TokenStore {
    Owned(Vec<u32>),
    Mapped(crate::shards::MappedTokens),
}

impl TokenStore {
    pub fn len(&self) -> usize {
        match self {
            TokenStore::Owned(v) => v.len(),
            TokenStore::Mapped(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn copy(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        match self {
            TokenStore::Owned(v) => out.extend_from_slice(&v[start..start + n]),
            TokenStore::Mapped(m) => m.copy(start, n, out),
        }
    }
}

/// Sliding windows over a range of token ids.
#[derive(Clone)]
pub struct Windows {
    store: Arc<TokenStore>,
    base: usize,
    /// Number of ids in the range.
    span: usize,
    max_length: usize,
    stride: usize,
    count: usize,
}

impl Windows {
    /// `for i in range(0, len(ids) - max_length, stride)`, as the book.
    pub fn new(ids: Vec<u32>, max_length: usize, stride: usize) -> Self {
        let len = ids.len();
        Self::over(Arc::new(TokenStore::Owned(ids)), 0, len, max_length, stride)
    }

    /// Windows over ids `base..base + len` of a shared store.
    pub fn over(
        store: Arc<TokenStore>,
        base: usize,
        len: usize,
        max_length: usize,
        stride: usize,
    ) -> Self {
        let count = if max_length == 0 || stride == 0 || len <= max_length {
            0
        } else {
            (len - max_length).div_ceil(stride)
        };
        Windows {
            store,
            base,
            span: len,
            max_length,
            stride,
            count,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the inputs and targets of window `i` to `x` and `y`.
    pub fn fill(&self, i: usize, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        let mut w = Vec::with_capacity(self.max_length + 1);
        self.store
            .copy(self.base + i * self.stride, self.max_length + 1, &mut w);
        x.extend_from_slice(&w[..self.max_length]);
        y.extend_from_slice(&w[1..]);
    }

    /// Inputs and targets of window `i`.
    pub fn get(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        self.fill(i, &mut x, &mut y);
        (x, y)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn token_count(&self) -> usize {
        self.span
    }
}

/// Batch order for one epoch.
#[derive(Clone, Debug)]
pub struct Loader {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
}

impl Loader {
    /// The first `max_batches` batches (all when `None`) of `n` examples in order, as evaluation
    /// reads them (`drop_last`: full batches only).
    pub fn in_order(
        n: usize,
        batch_size: usize,
        drop_last: bool,
        max_batches: Option<usize>,
    ) -> Vec<Vec<usize>> {
        let loader = Loader {
            batch_size,
            shuffle: false,
            drop_last,
            seed: 0,
        };
        let mut batches = loader.epoch(n, 0);
        batches.truncate(max_batches.unwrap_or(usize::MAX));
        batches
    }

    /// Number of batches per epoch over `n` windows.
    pub fn batches(&self, n: usize) -> usize {
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Window indices of each batch in epoch `epoch` (shuffled with `seed + epoch`).
    pub fn epoch(&self, n: usize, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..n).collect();
        if self.shuffle {
            let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64));
            order.shuffle(&mut rng);
        }
        let mut batches: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if self.drop_last && batches.last().is_some_and(|b| b.len() < self.batch_size) {
            batches.pop();
        }
        batches
    }
}

/// Stacks windows into (B, T) input and target tensors.
pub fn batch_tensors(
    w: &Windows,
    idx: &[usize],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let t = w.max_length();
    let mut x = Vec::with_capacity(idx.len() * t);
    let mut y = Vec::with_capacity(idx.len() * t);
    for &i in idx {
        w.fill(i, &mut x, &mut y);
    }
    Ok((
        Tensor::from_vec(x, (idx.len(), t), device)?,
        Tensor::from_vec(y, (idx.len(), t), device)?,
    ))
}

/// Splits text at a fraction of its characters (`text[:int(r * len(text))]`, as the book).
pub fn split_text(text: &str, train_fraction: f64) -> (&str, &str) {
    let chars = text.chars().count();
    let at = (train_fraction * chars as f64) as usize;
    let byte = text.char_indices().nth(at).map_or(text.len(), |(b, _)| b);
    text.split_at(byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_batches_follow_the_book() {
        let w = Windows::new((0..10).collect(), 4, 4);
        assert_eq!(w.len(), 2); // range(0, 6, 4)
        assert_eq!(w.get(1), (vec![4, 5, 6, 7], vec![5, 6, 7, 8]));
        let l = Loader {
            batch_size: 4,
            shuffle: false,
            drop_last: true,
            seed: 0,
        };
        assert_eq!(l.epoch(10, 0), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        let keep = Loader {
            drop_last: false,
            ..l.clone()
        };
        assert_eq!(keep.epoch(10, 0).len(), 3);
        let shuffled = Loader {
            shuffle: true,
            seed: 5,
            ..l
        };
        assert_eq!(shuffled.epoch(10, 0), shuffled.epoch(10, 0));
        assert_ne!(shuffled.epoch(10, 0), shuffled.epoch(10, 1));
        assert_eq!(split_text("héllo", 0.5), ("hé", "llo"));
    }
}
