//! Keys and values of the tokens seen so far, per layer, in their natural (B, capacity, W) layout
//! (W = key/value heads x head size): new positions are written in place (no copy of the whole
//! cache per token), and the buffers grow by doubling up to the context length.
//!
//! A sliding-window layer (Gemma 3's local layers) keeps only what its queries can still see: when
//! its buffer is full it moves its newest `window - 1` positions to the front and forgets the rest,
//! so its memory is bounded by about twice the window (plus one prompt chunk), not by the context.
//! The buffer then starts at position [`KvCache`]'s `start` of that layer: buffer row `j` holds
//! position `start + j`, and attention, which only compares positions, runs on buffer rows.
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// One layer's buffers and the position their first row holds.
#[derive(Debug)]
struct Layer {
    k: Tensor,
    v: Tensor,
    start: usize,
}

#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<Layer>>,
    /// Per layer, the attention window (`None`: every earlier position).
    windows: Vec<Option<usize>>,
    len: usize,
    context: usize,
}

impl Clone for KvCache {
    /// A deep copy: the buffers are written in place, so clones must not share them.
    fn clone(&self) -> Self {
        let copy = |l: &Option<Layer>| {
            l.as_ref().map(|l| Layer {
                k: l.k.copy().unwrap_or_else(|_| l.k.clone()),
                v: l.v.copy().unwrap_or_else(|_| l.v.clone()),
                start: l.start,
            })
        };
        KvCache {
            layers: self.layers.iter().map(copy).collect(),
            windows: self.windows.clone(),
            len: self.len,
            context: self.context,
        }
    }
}

impl KvCache {
    /// An empty cache for `n_layers` full-attention layers and at most `context` positions.
    pub fn new(n_layers: usize, context: usize) -> Self {
        Self::with_windows(vec![None; n_layers], context)
    }

    /// An empty cache for layers with these attention windows.
    pub fn with_windows(windows: Vec<Option<usize>>, context: usize) -> Self {
        KvCache {
            layers: windows.iter().map(|_| None).collect(),
            windows,
            len: 0,
            context,
        }
    }

    /// An empty cache whose buffers (batch 1, rows of `width` values of `dtype`) are made now for
    /// `positions` positions, so that it does not grow while they are filled and its memory is
    /// known from the start ([`KvCache::bytes_for`]). A sliding layer holds at most twice its window.
    pub fn preallocated(
        windows: Vec<Option<usize>>,
        context: usize,
        positions: usize,
        width: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let layers = windows
            .iter()
            .map(|&win| {
                let rows = Self::rows_for(win, positions.min(context));
                let buf = || Tensor::zeros((1, rows, width), dtype, device);
                Ok(Some(Layer {
                    k: buf()?,
                    v: buf()?,
                    start: 0,
                }))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            windows,
            len: 0,
            context,
        })
    }

    /// The bytes [`KvCache::preallocated`] takes for these layers and positions.
    pub fn bytes_for(
        windows: &[Option<usize>],
        positions: usize,
        width: usize,
        dtype: DType,
    ) -> usize {
        let rows: usize = windows.iter().map(|&w| Self::rows_for(w, positions)).sum();
        2 * rows * width * dtype.size_in_bytes()
    }

    fn rows_for(window: Option<usize>, positions: usize) -> usize {
        match window {
            Some(win) => positions.min(2 * win).max(1),
            None => positions.max(1),
        }
    }

    /// The memory its buffers take now.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Number of positions processed (cached, or seen and forgotten by sliding layers).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions `layer` holds in memory now (its buffer's valid rows).
    pub fn held(&self, layer: usize) -> usize {
        self.layers[layer]
            .as_ref()
            .map_or(0, |l| self.len - l.start)
    }

    /// Writes this step's keys and values (B, T, W) for `layer` after the cached positions; returns
    /// the buffers (B, capacity, W), whose first `len() - start + T` rows are valid, and `start`,
    /// the position of row 0 (0 unless the layer slides).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor, usize)> {
        let (b, t, w) = k.dims3()?;
        let window = self.windows.get(layer).copied().flatten();
        let len = self.len;
        if let (Some(win), Some(l)) = (window, self.layers[layer].as_mut()) {
            let (held, cap) = (len - l.start, l.k.dims()[1]);
            // Full: keep the newest window - 1 positions (all a query from here on can see).
            let keep = held.min(win.saturating_sub(1));
            if held + t > cap && keep < held {
                let shift = |buf: &Tensor| -> Result<()> {
                    let tail = buf.narrow(1, held - keep, keep)?.copy()?; // not a view of buf
                    Ok(buf.slice_set(&tail, 1, 0)?)
                };
                shift(&l.k)?;
                shift(&l.v)?;
                l.start = len - keep;
            }
        }
        let (held, cap, start) = self.layers[layer]
            .as_ref()
            .map_or((0, 0, len), |l| (len - l.start, l.k.dims()[1], l.start));
        let need = held + t;
        if need > cap {
            let limit = match window {
                Some(win) => need.max(2 * win),
                None => self.context.max(need),
            };
            let new_cap = (2 * cap).max(need).max(16).min(limit);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, new_cap, w), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(1, 0, held)?.contiguous()?, 1, 0)?;
                }
                Ok(buf)
            };
            let old = self.layers[layer].take();
            let kb = grow(old.as_ref().map(|l| &l.k))?;
            let vb = grow(old.as_ref().map(|l| &l.v))?;
            self.layers[layer] = Some(Layer {
                k: kb,
                v: vb,
                start,
            });
        }
        let Some(l) = &self.layers[layer] else {
            unreachable!("the layer's buffers were just made")
        };
        l.k.slice_set(&k.contiguous()?, 1, held)?;
        l.v.slice_set(&v.contiguous()?, 1, held)?;
        Ok((l.k.clone(), l.v.clone(), l.start))
    }

    /// Counts the `t` positions every layer has just appended.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
