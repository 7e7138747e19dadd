//! Models in GGUF files, llama.cpp's and Ollama's format: read ([`load_gguf`]) and written
//! ([`write_gguf`]) for GPT-2, Llama 3, Qwen3 and Gemma 3.
//!
//! What differs from our layout, as llama.cpp's converter (`convert_hf_to_gguf.py`) writes it:
//! - names: `token_embd`, `blk.N.attn_q`, `blk.N.ffn_gate`, ... (the table below);
//! - dimensions innermost first: a PyTorch `[out, in]` matrix is `[in, out]` in the file;
//! - GPT-2's query, key and value are one `attn_qkv` (rows stacked), and its `attn.bias` buffers
//!   are not written;
//! - Llama's query and key rows are permuted for llama.cpp's interleaved RoPE (each head's two
//!   halves interleaved), and Llama 3's frequency scaling is a `rope_freqs` tensor of per-pair
//!   factors instead of settings;
//! - Gemma's norm weights are stored as `1 + w` (what Gemma3RMSNorm multiplies by).
//!
//! The quantized types (Q8_0, Q4_0, Q4_K, Q6_K) stay quantized for the linear layers; an embedding
//! stored quantized is expanded to f32 for lookups and kept quantized for a tied output head.
//!
//! [`load`] reads, [`write`] writes; the name table and the row permutation they share are here.
use crate::config::{Arch, GptConfig};
use std::path::Path;

mod load;
mod write;

pub use load::load_gguf;
pub use write::{write_gguf, GgufQuant};

/// Whether `path` names a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// The GGUF architecture name of `arch`.
pub(super) fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
        Arch::Qwen3 => "qwen3",
        Arch::Gemma3 => "gemma3",
    }
}

/// Every (GGUF name, our name) pair of `cfg`'s tensors, GPT-2's fused `attn_qkv` excepted.
pub(super) fn name_pairs(cfg: &GptConfig) -> Vec<(String, String)> {
    let mut pairs = vec![(
        "token_embd.weight".to_string(),
        "tok_emb.weight".to_string(),
    )];
    let gpt2 = cfg.arch == Arch::Gpt2;
    if gpt2 {
        pairs.push(("position_embd.weight".into(), "pos_emb.weight".into()));
        pairs.push(("output_norm.weight".into(), "final_norm.scale".into()));
        pairs.push(("output_norm.bias".into(), "final_norm.shift".into()));
    } else {
        pairs.push(("output_norm.weight".into(), "final_norm.scale".into()));
    }
    for i in 0..cfg.n_layers {
        let (g, o) = (format!("blk.{i}"), format!("trf_blocks.{i}"));
        let mut add = |theirs: &str, ours: &str| {
            pairs.push((format!("{g}.{theirs}"), format!("{o}.{ours}")));
        };
        if gpt2 {
            for (t, u) in [("attn_norm", "norm1"), ("ffn_norm", "norm2")] {
                add(&format!("{t}.weight"), &format!("{u}.scale"));
                add(&format!("{t}.bias"), &format!("{u}.shift"));
            }
            for (t, u) in [
                ("attn_output", "att.out_proj"),
                ("ffn_up", "ff.layers.0"),
                ("ffn_down", "ff.layers.2"),
            ] {
                add(&format!("{t}.weight"), &format!("{u}.weight"));
                add(&format!("{t}.bias"), &format!("{u}.bias"));
            }
            continue;
        }
        for (t, u) in [
            ("attn_q", "att.W_query"),
            ("attn_k", "att.W_key"),
            ("attn_v", "att.W_value"),
            ("attn_output", "att.out_proj"),
            ("ffn_gate", "ff.fc1"),
            ("ffn_up", "ff.fc2"),
            ("ffn_down", "ff.fc3"),
        ] {
            add(&format!("{t}.weight"), &format!("{u}.weight"));
        }
        if cfg.qkv_bias {
            for (t, u) in [
                ("attn_q", "att.W_query"),
                ("attn_k", "att.W_key"),
                ("attn_v", "att.W_value"),
            ] {
                add(&format!("{t}.bias"), &format!("{u}.bias"));
            }
        }
        add("attn_norm.weight", "norm1.scale");
        add("ffn_norm.weight", "norm2.scale");
        if cfg.arch != Arch::Llama {
            add("attn_q_norm.weight", "att.q_norm.scale");
            add("attn_k_norm.weight", "att.k_norm.scale");
        }
        if cfg.arch == Arch::Gemma3 {
            add("post_attention_norm.weight", "post_att_norm.scale");
            add("post_ffw_norm.weight", "post_ff_norm.scale");
        }
    }
    if !cfg.tie_embeddings {
        pairs.push(("output.weight".into(), "out_head.weight".into()));
    }
    pairs
}

/// Whether our tensor `name` is a Gemma norm (stored as `1 + w` in GGUF).
pub(super) fn gemma_norm(cfg: &GptConfig, ours: &str) -> bool {
    cfg.arch == Arch::Gemma3 && ours.ends_with(".scale")
}

/// For Llama's query (`heads` = query heads) or key (`heads` = key/value heads) rows: the HF row
/// that GGUF row `r` holds. llama.cpp's converter interleaves each head's two rotary halves.
pub(super) fn llama_row_of(r: usize, head_dim: usize) -> usize {
    let (h, within) = (r / head_dim, r % head_dim);
    let (i, j) = (within / 2, within % 2);
    h * head_dim + j * (head_dim / 2) + i
}

/// Rows of a row-major byte matrix reordered: row `r` of the result is row `from(r)` of `bytes`.
pub(super) fn reorder_rows(bytes: &[u8], rows: usize, from: impl Fn(usize) -> usize) -> Vec<u8> {
    let row = bytes.len() / rows;
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        let s = from(r);
        out[r * row..(r + 1) * row].copy_from_slice(&bytes[s * row..(s + 1) * row]);
    }
    out
}

/// The inverse of [`llama_row_of`] as a map (GGUF row of HF row `r`).
pub(super) fn gguf_row_of(r: usize, head_dim: usize) -> usize {
    let (h, within) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    let (j, i) = (within / half, within % half);
    h * head_dim + 2 * i + j
}

/// The shape (PyTorch order) our tensor `ours` has in `cfg`.
pub(super) fn expected_shape(cfg: &GptConfig, ours: &str) -> Vec<usize> {
    let c = cfg.emb_dim;
    if ours == "tok_emb.weight" {
        return vec![cfg.vocab_size, c];
    }
    if ours == "pos_emb.weight" {
        return vec![cfg.context_length, c];
    }
    if let Some((_, out, inp, _)) = crate::lora::linear_layers(cfg)
        .into_iter()
        .find(|(n, ..)| ours.strip_suffix(".weight") == Some(n.as_str()))
    {
        return vec![out, inp];
    }
    if let Some((_, out, _, _)) = crate::lora::linear_layers(cfg)
        .into_iter()
        .find(|(n, ..)| ours.strip_suffix(".bias") == Some(n.as_str()))
    {
        return vec![out];
    }
    if ours.contains("q_norm") || ours.contains("k_norm") {
        return vec![cfg.head_dim()];
    }
    vec![c]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_row_permutation_is_the_converters_and_inverts() {
        // convert_hf_to_gguf.py's permute for one head of width 8: rows (0 4 1 5 2 6 3 7).
        let from: Vec<usize> = (0..8).map(|r| llama_row_of(r, 8)).collect();
        assert_eq!(from, [0, 4, 1, 5, 2, 6, 3, 7]);
        for r in 0..32 {
            assert_eq!(gguf_row_of(llama_row_of(r, 8), 8), r);
        }
    }
}
