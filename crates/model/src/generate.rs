//! Text generation: greedy decoding and sampling (temperature, top-k, top-p), with a KV cache.
//!
//! The loop is the book's `generate` (chapter 5): crop the context to the model's length, take the
//! last position's logits, pick a token, append, stop at end-of-text. With the cache, each step feeds
//! only the new token; once the sequence outgrows the context, positions shift, so the window is
//! recomputed from scratch each step, which gives exactly the ids of the uncached loop.
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, KvCache};
use candle_core::{IndexOp, Tensor};
use rand::{Rng, SeedableRng};

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// `None`: greedy (argmax). `Some(t)`: sample from softmax(logits / t), t > 0.
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
    /// Stop after emitting this id (end-of-text).
    pub stop_id: Option<u32>,
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 50,
            temperature: None,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_id: None,
            use_cache: true,
        }
    }
}

impl GenerateOptions {
    /// Refuses settings that have no meaning.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Generation(m));
        match self.temperature {
            Some(t) if !(t > 0.0 && t.is_finite()) => {
                return bad(format!(
                    "temperature {t} must be positive and finite (use greedy decoding for 0)"
                ))
            }
            None if self.top_k.is_some() || self.top_p.is_some() => {
                return bad("top-k and top-p need sampling: give a temperature".into())
            }
            _ => {}
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top-p {p} must be in (0, 1]"));
            }
        }
        Ok(())
    }
}

/// Why a row of logits cannot be sampled from. Models whose training diverged produce NaN (and
/// sometimes +inf) logits; a comparison against NaN is always false, so sorting, top-k and argmax
/// would silently pick garbage or index past their candidates without this check.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LogitsError {
    #[error("no logits (an empty vocabulary)")]
    Empty,
    #[error("NaN logits ({count} of {len}, the first at id {first})")]
    NaN {
        first: usize,
        count: usize,
        len: usize,
    },
    #[error("an infinite logit (+inf at id {id} of {len})")]
    Infinite { id: usize, len: usize },
    #[error("only -inf logits ({len} of them): no token can be chosen")]
    NoCandidate { len: usize },
}

/// Checks that `logits` can be sampled from: no NaN, no +inf, at least one finite value.
/// A `-inf` logit is allowed: it is a token masked out (probability 0), as the book's top-k does.
pub fn check_logits(logits: &[f32]) -> Result<(), LogitsError> {
    let len = logits.len();
    if len == 0 {
        return Err(LogitsError::Empty);
    }
    if let Some(first) = logits.iter().position(|x| x.is_nan()) {
        let count = logits.iter().filter(|x| x.is_nan()).count();
        return Err(LogitsError::NaN { first, count, len });
    }
    if let Some(id) = logits.iter().position(|&x| x == f32::INFINITY) {
        return Err(LogitsError::Infinite { id, len });
    }
    if logits.iter().all(|&x| x == f32::NEG_INFINITY) {
        return Err(LogitsError::NoCandidate { len });
    }
    Ok(())
}

/// Index of the first maximum (as `torch.argmax`); 0 for an empty slice. NaN is never a maximum
/// here (call [`check_logits`] first to refuse it).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks a token from one position's logits: greedy (the first maximum, so all-equal logits give
/// id 0), or a sample after temperature, top-k and top-p. Logits that cannot be sampled from are
/// an error (see [`check_logits`]); any `top_k` (even above the vocabulary) and any valid options
/// give a token whose logit is finite.
pub fn pick(
    logits: &[f32],
    opts: &GenerateOptions,
    rng: &mut impl Rng,
) -> Result<u32, LogitsError> {
    check_logits(logits)?;
    let Some(temp) = opts.temperature else {
        return Ok(argmax(logits));
    };
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    // top-k keeps every token at least as large as the k-th (the book's `logits < min_val` rule).
    if let Some(k) = opts.top_k.filter(|&k| k > 0 && k < order.len()) {
        let kth = logits[order[k - 1] as usize];
        order.retain(|&i| logits[i as usize] >= kth);
    }
    let max = logits[order[0] as usize];
    // In f32 as before, so that seeded samples stay the same; with finite `max` and a positive
    // finite temperature this is never NaN: at worst -inf, whose exp is 0.
    // Tokens with no probability (masked with -inf, or underflowed) are dropped, so that not even
    // the rounding fallback below can draw one. The maximum has exp(0) = 1, so one always stays.
    let (mut order, mut probs): (Vec<u32>, Vec<f64>) = order
        .iter()
        .map(|&i| (i, (((logits[i as usize] - max) / temp) as f64).exp()))
        .filter(|&(_, p)| p > 0.0)
        .unzip();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    // top-p keeps the smallest prefix whose mass reaches p (the first token always).
    if let Some(p) = opts.top_p {
        let mut mass = 0.0;
        let keep = probs.iter().position(|&q| {
            mass += q;
            mass >= p as f64
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, &p) in probs.iter().enumerate() {
        r -= p;
        if r < 0.0 {
            return Ok(order[i]);
        }
    }
    // Rounding left `r` just above 0: the last candidate (there is at least one, the maximum).
    Ok(order.last().copied().unwrap_or_default())
}

/// A chosen token's log-probability under the model, with the most likely tokens beside it (OpenAI's
/// `logprobs`). The distribution is the model's own: the softmax of the raw logits, before
/// temperature, penalties or masks change what is sampled (as vLLM's default, `raw_logprobs`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first (ties by id), with their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

/// The log-probability of `id` under `softmax(logits)` and the `top` most likely tokens; the
/// normalizer is summed in f64. The logits must be finite where they are not -inf (see
/// [`check_logits`]).
pub fn token_logprob(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    let lp = |i: u32| (logits[i as usize] as f64 - lse) as f32;
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(order.len());
    if top > 0 && top < order.len() {
        order.select_nth_unstable_by(top - 1, by_logit);
    }
    order.truncate(top);
    order.sort_unstable_by(by_logit);
    TokenLogprob {
        id,
        logprob: lp(id),
        top: order.into_iter().map(|i| (i, lp(i))).collect(),
    }
}

/// Generates after `prompt`; calls `on_token` with each new id as it is chosen (return `false` to
/// stop). Returns the new ids. A prompt longer than the context keeps its last tokens.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    let mut g = Generation::new(model, prompt, opts)?;
    // `max_new_tokens` is the user's number (up to u64::MAX): reserve no more than a context's worth.
    let mut new = Vec::with_capacity(opts.max_new_tokens.min(model.config().context_length));
    while let Some(next) = g.next_token()? {
        new.push(next);
        if !on_token(next)? {
            break;
        }
    }
    Ok(new)
}

/// Refuses a prompt the model cannot read: empty, or with an id outside its vocabulary.
pub fn check_prompt(model: &Gpt, prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(ModelError::Generation(
            "the prompt is empty; give at least one token".into(),
        ));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(&bad) = prompt.iter().find(|&&id| id >= vocab) {
        return Err(ModelError::Generation(format!(
            "prompt token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// How one sequence picks its tokens: its options and its own generator, seeded from them (so a
/// sequence samples the same tokens whatever else is computed beside it).
#[derive(Clone, Debug)]
pub struct Sampler {
    opts: GenerateOptions,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(opts: &GenerateOptions) -> Self {
        Sampler {
            opts: opts.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
        }
    }

    /// The next token from one position's logits (see [`pick`]).
    pub fn pick(&mut self, logits: &[f32]) -> Result<u32, LogitsError> {
        pick(logits, &self.opts, &mut self.rng)
    }

    pub fn options(&self) -> &GenerateOptions {
        &self.opts
    }
}

/// A generation in progress, one token per [`Generation::next_token`] call.
pub struct Generation<'m> {
    model: &'m Gpt,
    opts: GenerateOptions,
    sampler: Sampler,
    ids: Vec<u32>,
    cache: KvCache,
    produced: usize,
    done: bool,
}

impl<'m> Generation<'m> {
    /// Checks the settings and the prompt; nothing is computed yet.
    pub fn new(model: &'m Gpt, prompt: &[u32], opts: &GenerateOptions) -> Result<Self> {
        opts.validate()?;
        check_prompt(model, prompt)?;
        Ok(Generation {
            model,
            opts: opts.clone(),
            sampler: Sampler::new(opts),
            ids: prompt.to_vec(),
            cache: model.new_cache(),
            produced: 0,
            done: false,
        })
    }

    /// The next token, or `None` once `max_new_tokens` are out or the stop id was emitted.
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if self.done || self.produced >= self.opts.max_new_tokens {
            return Ok(None);
        }
        let (model, ids) = (self.model, &self.ids);
        let ctx = model.config().context_length;
        let window = &ids[ids.len().saturating_sub(ctx)..];
        let logits = if !self.opts.use_cache {
            last_logits(&model.forward(&row(window, model)?, None)?)?
        } else if self.cache.is_empty() || self.cache.len() + 1 > ctx || ids.len() > ctx {
            self.cache = model.new_cache();
            last_logits(&model.forward_cached(&row(window, model)?, &mut self.cache)?)?
        } else {
            last_logits(
                &model.forward_cached(&row(&ids[ids.len() - 1..], model)?, &mut self.cache)?,
            )?
        };
        let next = self
            .sampler
            .pick(&logits)
            .map_err(|problem| ModelError::Logits {
                model: model.source().to_string(),
                problem,
            })?;
        self.ids.push(next);
        // Only the last `ctx` ids are ever read: keep the history bounded however long the
        // generation runs (one more than the context, so `ids.len() > ctx` still says it slid).
        if self.ids.len() > 2 * ctx + 1 {
            self.ids.drain(..self.ids.len() - (ctx + 1));
        }
        self.produced += 1;
        self.done = Some(next) == self.opts.stop_id;
        Ok(Some(next))
    }

    /// Tokens generated so far.
    pub fn produced(&self) -> usize {
        self.produced
    }
}

fn row(ids: &[u32], model: &Gpt) -> Result<Tensor> {
    Ok(Tensor::new(ids, model.device())?.unsqueeze(0)?) // (1, T)
}

/// The last position's logits of (1, T, V) as a vector.
fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    let t = logits.dims()[1];
    Ok(logits
        .i((0, t - 1))?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_logprobs_are_the_log_softmax_with_the_top_tokens_in_order() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NEG_INFINITY];
        // log(e^1 + e^3 + e^2 + e^3) = 3.0 + log(e^-2 + 1 + e^-1 + 1)
        let lse = 3.0 + ((-2.0f64).exp() + 2.0 + (-1.0f64).exp()).ln();
        let got = token_logprob(&logits, 2, 3);
        assert_eq!(got.id, 2);
        assert!((got.logprob as f64 - (2.0 - lse)).abs() < 1e-6);
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "ties by id, most likely first");
        assert!((got.top[0].1 as f64 - (3.0 - lse)).abs() < 1e-6);
        // A masked token has no probability; asking for more than the vocabulary gives it all.
        let all = token_logprob(&logits, 4, 10);
        assert_eq!(all.logprob, f32::NEG_INFINITY);
        assert_eq!(all.top.len(), 5);
        assert!(token_logprob(&logits, 1, 0).top.is_empty());
        let total: f64 = all.top.iter().map(|t| (t.1 as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
