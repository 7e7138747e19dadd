//! The RoPE/RMSNorm decoders of the book's bonus chapters: Llama 3 (and Llama 2, and Qwen2/2.5 with
//! `qkv_bias`), Qwen3 and Gemma 3 text, as transformers' `modeling_llama.py`, `modeling_qwen3.py`
//! and `modeling_gemma3.py` compute them.
//!
//! Configuration ([`GptConfig`], `arch` llama | qwen3 | gemma3): C = emb_dim, nh = n_heads,
//! nkv = n_kv_heads (grouped-query attention: query head h reads key/value head h / (nh / nkv)),
//! hs = head_dim (Qwen3 and Gemma 3 set it independently of C), H = hidden_dim. Dimension letters
//! in shape comments as in `gpt.rs`: B batch, T new tokens, Tk keys (cached + new).
//!
//! A block, pre-norm with residuals (Gemma 3 also normalizes each branch's output):
//! ```text
//! h = norm1(x);  q, k, v = Wq h, Wk h, Wv h           (B, T, nh*hs), (B, T, nkv*hs) twice
//! q, k = qk_norm(q, k) per head                        Qwen3, Gemma 3
//! q, k = rope(q), rope(k)                              positions offset..offset+T
//! a = softmax(q k^T * scale + causal/window mask) v    scale hs^-0.5 (Gemma 3: qpas^-0.5)
//! x = x + post_att_norm(out_proj(a))                   post_att_norm: Gemma 3 only
//! h = norm2(x);  x = x + post_ff_norm(fc3(act(fc1 h) * fc2 h))   act: SiLU, Gemma 3 tanh-GELU
//! ```
//! Tensor names are the book's (`trf_blocks.N.att.W_query`, `.ff.fc1` gate, `.fc2` up, `.fc3` down,
//! `.norm1`, `.norm2`, Gemma's `.post_att_norm`, `.post_ff_norm`, `.att.q_norm`, `.att.k_norm`,
//! `final_norm`, `tok_emb`, `out_head`); `weights::from_hf_decoder` maps Hugging Face's onto them.
//! Gemma's norm weights are stored as published (the scale is 1 + w).
use crate::config::{Arch, GptConfig, RopeScaling};
use crate::error::Result;
use crate::gpt::{dropout, dropout_mask, linear, residual, DropoutRng, Kv, KvCache, Lin};
use crate::lora::LoraSpec;
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};

/// RMSNorm over the last dimension (Gemma 3's multiplies by 1 + w).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub(crate) weight: Tensor,
    eps: f64,
    unit_offset: bool,
}

impl RmsNorm {
    pub(crate) fn load(w: &Weights, name: &str, c: usize, cfg: &GptConfig) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get(&format!("{name}.scale"), &[c])?,
            eps: cfg.eps(),
            unit_offset: cfg.arch == Arch::Gemma3,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::rms_norm(
            x,
            &self.weight,
            self.eps,
            self.unit_offset,
        )?)
    }
}

/// RoPE's inverse frequencies for one base, as transformers computes them (in f32): `base^(-2i/hs)`,
/// then Llama 3's wavelength-dependent scaling or a linear one.
pub fn inv_freq(hs: usize, base: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base = base as f32;
    let plain: Vec<f32> = (0..hs / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / hs as f32))
        .collect();
    let Some(s) = scaling else {
        return plain;
    };
    let factor = s.factor as f32;
    let Some(l) = &s.llama3 else {
        return plain.iter().map(|f| f / factor).collect();
    };
    let (low, high) = (l.low_freq_factor as f32, l.high_freq_factor as f32);
    let old = l.original_context_length as f32;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    plain
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// cos and sin (T, hs/2) of the angles `position * inv_freq` for T positions.
fn rope_tables(inv: &[f32], positions: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
    let t = positions.len();
    let angles: Vec<f32> = positions
        .iter()
        .flat_map(|&p| inv.iter().map(move |&f| p as f32 * f))
        .collect();
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let shape = (t, inv.len());
    Ok((
        Tensor::from_vec(cos, shape, dev)?,
        Tensor::from_vec(sin, shape, dev)?,
    ))
}

/// The positions of one forward pass, with the RoPE tables of each base.
pub(crate) struct Positions {
    pub offset: usize,
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

/// The inverse frequencies of a decoder: the global layers', and the sliding layers' when their
/// base differs (Gemma 3).
#[derive(Clone, Debug)]
pub(crate) struct Rope {
    global: Vec<f32>,
    local: Option<Vec<f32>>,
}

impl Rope {
    pub fn new(cfg: &GptConfig) -> Self {
        let hs = cfg.head_dim();
        let base = cfg.rope_base.unwrap_or(10_000.0);
        Rope {
            global: inv_freq(hs, base, cfg.rope_scaling.as_ref()),
            // Gemma 3's local layers use their own base and no scaling.
            local: cfg.rope_local_base.map(|b| inv_freq(hs, b, None)),
        }
    }

    /// The tables of these positions (one per new token); `offset` is the first when the rows of
    /// a batch share them.
    pub fn positions(&self, offset: usize, positions: &[usize], dev: &Device) -> Result<Positions> {
        Ok(Positions {
            offset,
            global: rope_tables(&self.global, positions, dev)?,
            local: match &self.local {
                Some(inv) => Some(rope_tables(inv, positions, dev)?),
                None => None,
            },
        })
    }
}

/// Grouped-query attention with RoPE, optional QK-norm and an optional sliding window.
#[derive(Clone, Debug)]
pub struct Attention {
    w_query: Lin,
    w_key: Lin,
    w_value: Lin,
    out_proj: Lin,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    window: Option<usize>,
    drop_rate: f32,
}

impl Attention {
    fn load(
        w: &Weights,
        p: &str,
        layer: usize,
        cfg: &GptConfig,
        lora: Option<&LoraSpec>,
    ) -> Result<Self> {
        let (c, hs) = (cfg.emb_dim, cfg.head_dim());
        let (q, kv) = (cfg.n_heads * hs, cfg.kv_heads() * hs);
        let qk_norm = |n: &str| -> Result<Option<RmsNorm>> {
            match cfg.arch {
                Arch::Qwen3 | Arch::Gemma3 => {
                    Ok(Some(RmsNorm::load(w, &format!("{p}.{n}"), hs, cfg)?))
                }
                _ => Ok(None),
            }
        };
        let scale = match cfg.query_pre_attn_scalar {
            Some(s) => s.powf(-0.5),
            None => (hs as f64).powf(-0.5),
        };
        Ok(Attention {
            w_query: linear(w, &format!("{p}.W_query"), q, c, cfg.qkv_bias, lora)?,
            w_key: linear(w, &format!("{p}.W_key"), kv, c, cfg.qkv_bias, lora)?,
            w_value: linear(w, &format!("{p}.W_value"), kv, c, cfg.qkv_bias, lora)?,
            out_proj: linear(w, &format!("{p}.out_proj"), c, q, false, lora)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.kv_heads(),
            head_dim: hs,
            scale,
            window: cfg.window(layer),
            drop_rate: cfg.drop_rate,
        })
    }

    /// `x` (B, T, C) holds the new tokens at `pos.offset..pos.offset + T` (for [`Kv::Segments`],
    /// each segment's rows at its own cache's positions, as `pos`'s tables say).
    fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        kv: Kv,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let (b, t, _c) = x.dims3()?;
        let (nh, nkv, hs) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (cos, sin) = match (&pos.local, self.window) {
            (Some(local), Some(_)) => local,
            _ => &pos.global,
        };
        // (B, T, n*hs) -> (B, n, T, hs), normed per head, rotated.
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let mut y = y.reshape((b, t, n, hs))?;
            if let Some(norm) = norm {
                y = norm.forward(&y)?;
            }
            Ok(crate::kernels::rope(&y.transpose(1, 2)?, cos, sin)?)
        };
        let q = heads(self.w_query.forward(x)?, nh, &self.q_norm)?; // (B, nh, T, hs)
        let k = heads(self.w_key.forward(x)?, nkv, &self.k_norm)?; // (B, nkv, T, hs)
        let v = self.w_value.forward(x)?; // (B, T, nkv*hs)
                                          // Rows: q and k (B, n, T, hs) along dimension 2, v (B, T, nkv*hs) along 1.
        let y = kv.attend(
            [q, k, v],
            [2, 2, 1],
            pos.offset,
            train,
            |[q, k, v], c, o, tr| self.attend(q, k, v, c, o, tr),
        )?;
        self.out_proj.forward(&y)
    }

    /// Attention of queries q (B, nh, T, hs) over keys k (B, nkv, T, hs) and values v
    /// (B, T, nkv*hs) of the new tokens and the cached ones, the new tokens at positions
    /// `offset..`: (B, T, nh*hs) before the output projection.
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cache: Option<(&mut KvCache, usize)>,
        mut offset: usize,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let (nh, nkv, hs) = (self.n_heads, self.n_kv_heads, self.head_dim);
        if cache.is_none() && offset == 0 {
            let v = v.reshape((b, t, nkv, hs))?.transpose(1, 2)?; // (B, nkv, T, hs)
            let mask = dropout_mask(self.drop_rate, train);
            let y = crate::kernels::causal_attention(&q, &k, &v, self.scale, self.window, mask)?;
            return Ok(y);
        }
        // Attention compares positions only: with a cache whose rows start at position `start`
        // (a sliding layer forgets what it can no longer see), it runs on buffer rows.
        let (k, v, tk) = match cache {
            Some((cache, layer)) => {
                let k_rows = k.transpose(1, 2)?.reshape((b, t, nkv * hs))?;
                let (kb, vb, start) = cache.append(layer, &k_rows, &v)?; // (B, capacity, nkv*hs)
                offset -= start;
                let tk = offset + t;
                if train.is_none() {
                    let q_rows = q.transpose(1, 2)?.reshape((b, t, nh * hs))?;
                    if let Some(y) = crate::kernels::cached_attention_gqa(
                        &q_rows,
                        &kb,
                        &vb,
                        nh,
                        nkv,
                        hs,
                        tk,
                        self.scale,
                        self.window,
                    )? {
                        return Ok(y);
                    }
                }
                let split = |y: &Tensor| -> Result<Tensor> {
                    Ok(y.narrow(1, 0, tk)?
                        .reshape((b, tk, nkv, hs))?
                        .transpose(1, 2)?)
                };
                (split(&kb)?, split(&vb)?, tk)
            }
            None => (k, v.reshape((b, t, nkv, hs))?.transpose(1, 2)?, t),
        };
        // Each key/value head serves nh / nkv query heads: (B, nkv, Tk, hs) -> (B, nh, Tk, hs).
        let repeat = |y: Tensor| -> Result<Tensor> {
            if nh == nkv {
                return Ok(y.contiguous()?);
            }
            Ok(y.unsqueeze(2)?
                .broadcast_as((b, nkv, nh / nkv, tk, hs))?
                .reshape((b, nh, tk, hs))?)
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let scores = q.contiguous()?.matmul(&k.t()?)?; // (B, nh, T, Tk)
        let weights =
            crate::kernels::causal_softmax_window(&scores, self.scale, offset, self.window)?;
        let weights = dropout(&weights, self.drop_rate, train)?;
        let y = weights.matmul(&v)?; // (B, nh, T, hs)
        Ok(y.transpose(1, 2)?.reshape((b, t, nh * hs))?)
    }
}

/// The gated feed-forward block: `fc3(act(fc1 x) * fc2 x)`, C -> H -> C.
#[derive(Clone, Debug)]
pub struct GatedFeedForward {
    fc1: Lin,
    fc2: Lin,
    fc3: Lin,
    gelu: bool,
}

impl GatedFeedForward {
    fn load(w: &Weights, p: &str, cfg: &GptConfig, lora: Option<&LoraSpec>) -> Result<Self> {
        let (c, h) = (cfg.emb_dim, cfg.ff_dim());
        Ok(GatedFeedForward {
            fc1: linear(w, &format!("{p}.fc1"), h, c, false, lora)?,
            fc2: linear(w, &format!("{p}.fc2"), h, c, false, lora)?,
            fc3: linear(w, &format!("{p}.fc3"), c, h, false, lora)?,
            gelu: cfg.arch == Arch::Gemma3,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.fc1.forward(x)?, self.fc2.forward(x)?); // (B, T, H)
        let h = if self.gelu {
            crate::kernels::geglu(&gate, &up)?
        } else {
            crate::kernels::swiglu(&gate, &up)?
        };
        self.fc3.forward(&h)
    }
}

/// One decoder block.
#[derive(Clone, Debug)]
pub struct DecoderBlock {
    att: Attention,
    ff: GatedFeedForward,
    norm1: RmsNorm,
    norm2: RmsNorm,
    /// Gemma 3's norms on the outputs of attention and feed-forward.
    post_norms: Option<(RmsNorm, RmsNorm)>,
    drop_rate: f32,
}

impl DecoderBlock {
    pub(crate) fn load(
        w: &Weights,
        i: usize,
        cfg: &GptConfig,
        lora: Option<&LoraSpec>,
    ) -> Result<Self> {
        let p = format!("trf_blocks.{i}");
        let c = cfg.emb_dim;
        let norm = |n: &str| RmsNorm::load(w, &format!("{p}.{n}"), c, cfg);
        Ok(DecoderBlock {
            att: Attention::load(w, &format!("{p}.att"), i, cfg, lora)?,
            ff: GatedFeedForward::load(w, &format!("{p}.ff"), cfg, lora)?,
            norm1: norm("norm1")?,
            norm2: norm("norm2")?,
            post_norms: match cfg.arch {
                Arch::Gemma3 => Some((norm("post_att_norm")?, norm("post_ff_norm")?)),
                _ => None,
            },
            drop_rate: cfg.drop_rate,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        pos: &Positions,
        kv: Kv,
        train: Option<&DropoutRng>,
    ) -> Result<Tensor> {
        let mut h = self.att.forward(&self.norm1.forward(x)?, pos, kv, train)?;
        if let Some((post_att, _)) = &self.post_norms {
            h = post_att.forward(&h)?;
        }
        let x = residual(x, &h, self.drop_rate, train)?;
        let mut h = self.ff.forward(&self.norm2.forward(&x)?)?;
        if let Some((_, post_ff)) = &self.post_norms {
            h = post_ff.forward(&h)?;
        }
        residual(&x, &h, self.drop_rate, train)
    }
}

/// Gemma 3 scales the embeddings by sqrt(C), rounded to the activations' dtype as transformers does.
pub(crate) fn embedding_scale(cfg: &GptConfig, dtype: DType) -> Option<f64> {
    (cfg.arch == Arch::Gemma3).then(|| {
        let s = (cfg.emb_dim as f64).sqrt();
        match dtype {
            DType::BF16 => half::bf16::from_f64(s).to_f64(),
            DType::F16 => half::f16::from_f64(s).to_f64(),
            _ => s as f32 as f64,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Llama3Rope;

    #[test]
    fn llama3_scaling_keeps_short_wavelengths_and_divides_long_ones() {
        let s = RopeScaling {
            factor: 8.0,
            llama3: Some(Llama3Rope {
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length: 32,
            }),
        };
        let plain = inv_freq(16, 500_000.0, None);
        let scaled = inv_freq(16, 500_000.0, Some(&s));
        assert_eq!(scaled[0], plain[0]); // wavelength 2 pi < 32 / 4
        assert_eq!(scaled[7], plain[7] / 8.0); // the longest wavelengths
        assert!(scaled
            .iter()
            .zip(&plain)
            .all(|(s, p)| s <= p && *s >= p / 8.0));
    }
}
