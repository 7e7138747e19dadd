//! The model worker: one thread owns the model and serves a bounded queue of jobs with continuous
//! batching. Each step advances every generating sequence by one token in one batched forward pass
//! (their rows go through each linear layer together, so the weights are read once for all of them;
//! attention runs per sequence against its own cache), and feeds one chunk of at most
//! `prefill_chunk` prompt tokens of a sequence being admitted, so that a long prompt holds the
//! running streams back by at most one chunk. New requests are admitted between steps while fewer
//! than `max_active` sequences run and their caches fit the memory budget (the others wait in the
//! queue, in order); a finished sequence, or one whose client has gone away, frees its slot at once.
//!
//! A sequence's tokens do not depend on what runs beside it: its prompt is fed in the same chunks,
//! its rows are computed as in a pass of their own ([`Gpt::forward_segments`]; decode batches are
//! cut at [`MAX_ROWS`] sequences, the row kernels' limit), and it samples from its own seeded
//! generator.
use crate::metrics::Metrics;
use scratchllm_model::classifier::{predict, ClassifierSpec, Prediction};
pub use scratchllm_model::decode::Finish;
use scratchllm_model::decode::{Piece, TextStream};
use scratchllm_model::generate::{check_prompt, token_logprob, Sampler, TokenLogprob};
use scratchllm_model::kernels::MAX_ROWS;
use scratchllm_model::{GenerateOptions, Gpt, GptConfig, KvCache, PromptStyle, Segment};
use scratchllm_tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// What the model does.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A language model; chat messages are formatted in this style.
    Lm {
        style: PromptStyle,
    },
    Classifier(ClassifierSpec),
}

/// What a generation sends back, in order: text pieces, then one `Done` or `Error`. When log
/// probabilities were asked for, each token's goes with the first piece that carries its text (a
/// token whose text is held back, or never sent, such as the end-of-text, goes with a later one
/// or with `Done`).
#[derive(Debug)]
pub enum Event {
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish: Finish,
        completion_tokens: usize,
        logprobs: Vec<TokenLogprob>,
    },
    Error(String),
}

/// Work for the model thread.
pub enum Job {
    Generate(Request),
    Classify {
        texts: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Prediction>, String>>,
    },
}

/// A generation asked for.
pub struct Request {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// Stop strings (never sent).
    pub stops: Vec<String>,
    /// Generate past the end-of-text and end-of-turn tokens (vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    /// No end-of-text or end-of-turn token before this many tokens (vLLM's `min_tokens`).
    pub min_tokens: usize,
    /// OpenAI's penalties on tokens already generated: `presence` once for each token that
    /// appeared, `frequency` times the number of times it did, subtracted from its logit.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Each token's log-probability, with this many alternatives (`None`: none asked).
    pub logprobs: Option<usize>,
    pub events: mpsc::UnboundedSender<Event>,
    /// The events of more choices of the same prompt (OpenAI's `n` - 1): the prompt is read once,
    /// then each choice samples on from a copy of its cache with the request's seed plus its
    /// index.
    pub more: Vec<mpsc::UnboundedSender<Event>>,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
}

/// A loaded model behind its queue.
pub struct Engine {
    pub name: String,
    pub config: GptConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub kind: Kind,
    pub eos: Option<u32>,
    pub jobs: mpsc::Sender<Job>,
}

/// How much the model thread takes on at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sequences generating at once.
    pub max_active: usize,
    /// Prompt tokens fed per step.
    pub prefill_chunk: usize,
    /// Memory for the active sequences' KV caches.
    pub kv_cache_bytes: usize,
}

/// One sequence being served.
struct Sequence<'m> {
    /// The prompt, then the tokens generated.
    ids: Vec<u32>,
    /// How many of `ids` are in the cache.
    fed: usize,
    cache: KvCache,
    /// The bytes of `cache`, counted against the budget.
    bytes: usize,
    sampler: Sampler,
    text: TextStream<'m>,
    produced: usize,
    /// The ids that end the text (its `stop_ids`) are masked out until this many are produced.
    min_tokens: usize,
    penalties: (f32, f32),
    /// How many times each token was generated (for the penalties).
    counts: std::collections::HashMap<u32, u32>,
    /// Log-probabilities asked for (with this many alternatives), and those not yet sent.
    logprobs: Option<usize>,
    pending: Vec<TokenLogprob>,
    events: mpsc::UnboundedSender<Event>,
    /// When the request arrived, then when the last token was chosen.
    last: Instant,
    /// The other choices, which start from this one's cache once the prompt is read.
    forks: Vec<Fork<'m>>,
}

/// A choice waiting for its prompt to be read.
struct Fork<'m> {
    sampler: Sampler,
    text: TextStream<'m>,
    events: mpsc::UnboundedSender<Event>,
}

impl<'m> Sequence<'m> {
    /// The other choices of the request, each with a copy of the cache (the prompt just read),
    /// given its token from the same logits; the ones that go on.
    fn fork(&mut self, model: &Gpt, metrics: &Metrics, logits: &[f32]) -> Vec<Sequence<'m>> {
        let each = self.bytes / (1 + self.forks.len());
        let mut born = Vec::new();
        for f in std::mem::take(&mut self.forks) {
            self.bytes -= each;
            let mut s = Sequence {
                ids: self.ids.clone(),
                fed: self.fed,
                cache: self.cache.clone(),
                bytes: each,
                sampler: f.sampler,
                text: f.text,
                produced: 0,
                min_tokens: self.min_tokens,
                penalties: self.penalties,
                counts: Default::default(),
                logprobs: self.logprobs,
                pending: Vec::new(),
                events: f.events,
                last: self.last,
                forks: Vec::new(),
            };
            if s.accept(model, metrics, logits) {
                born.push(s);
            }
        }
        born
    }

    /// Whether every token but the newest is in the cache: the next step decodes.
    fn decoding(&self) -> bool {
        self.fed + 1 == self.ids.len() && self.produced > 0
    }

    /// Takes the logits of the last position fed: picks a token, sends its text, and says whether
    /// the sequence goes on.
    fn accept(&mut self, model: &Gpt, metrics: &Metrics, logits: &[f32]) -> bool {
        let raw = logits;
        let early = self.produced < self.min_tokens && !self.text.stop_ids().is_empty();
        let (presence, frequency) = self.penalties;
        let penalized = !self.counts.is_empty() && (presence != 0.0 || frequency != 0.0);
        let adjusted;
        let logits = if early || penalized {
            let mut l = logits.to_vec();
            if penalized {
                for (&id, &n) in &self.counts {
                    if let Some(x) = l.get_mut(id as usize) {
                        *x -= presence + frequency * n as f32;
                    }
                }
            }
            if early {
                for &id in self.text.stop_ids() {
                    if let Some(x) = l.get_mut(id as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            adjusted = l;
            &adjusted
        } else {
            logits
        };
        let next = match self.sampler.pick(logits) {
            Ok(next) => next,
            Err(problem) => {
                let e = scratchllm_model::ModelError::Logits {
                    model: model.source().to_string(),
                    problem,
                };
                return self.fail(e.to_string());
            }
        };
        if let Some(top) = self.logprobs {
            self.pending.push(token_logprob(raw, next, top));
        }
        self.ids.push(next);
        self.produced += 1;
        *self.counts.entry(next).or_insert(0) += 1;
        let now = Instant::now();
        let since = (now - self.last).as_secs_f64();
        if self.produced == 1 {
            metrics.ttft.observe(since);
        } else {
            metrics.itl.observe(since);
        }
        self.last = now;
        metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
        let piece = match self.text.push(next) {
            Ok(p) => p,
            Err(e) => return self.fail(e.to_string()),
        };
        let limit = self.sampler.options().max_new_tokens;
        let piece = match piece {
            Piece::Text(text) if self.produced >= limit || self.ids.len() >= context(model) => {
                self.send_text(text);
                self.text.finish()
            }
            piece => piece,
        };
        match piece {
            Piece::Text(text) => {
                self.send_text(text);
                true
            }
            Piece::Done(text, finish) => {
                self.send_text(text);
                let _ = self.events.send(Event::Done {
                    finish,
                    completion_tokens: self.produced,
                    logprobs: std::mem::take(&mut self.pending),
                });
                false
            }
        }
    }

    fn send_text(&mut self, text: String) {
        if !text.is_empty() {
            let logprobs = std::mem::take(&mut self.pending);
            let _ = self.events.send(Event::Text { text, logprobs });
        }
    }

    fn fail(&self, message: String) -> bool {
        let _ = self.events.send(Event::Error(message.clone()));
        for f in &self.forks {
            let _ = f.events.send(Event::Error(message.clone()));
        }
        false
    }
}

fn context(model: &Gpt) -> usize {
    model.config().context_length
}

/// The batching loop's state: the sequences being served and the memory their caches take.
struct Batcher<'m> {
    model: &'m Gpt,
    tok: &'m Tokenizer,
    stop_ids: Vec<u32>,
    limits: Limits,
    active: Vec<Sequence<'m>>,
    used_bytes: usize,
    metrics: &'m Metrics,
}

impl<'m> Batcher<'m> {
    /// Starts a generation when its cache fits the budget; gives the job back when it must wait.
    fn admit(&mut self, r: Request) -> Option<Job> {
        let positions = (r.prompt.len() + r.opts.max_new_tokens).min(context(self.model));
        let bytes = self.model.cache_bytes(positions) * (1 + r.more.len());
        if self.used_bytes + bytes > self.limits.kv_cache_bytes && !self.active.is_empty() {
            return Some(Job::Generate(r));
        }
        let Request {
            prompt,
            mut opts,
            stops,
            ignore_eos,
            min_tokens,
            presence_penalty,
            frequency_penalty,
            logprobs,
            events,
            more,
            arrived,
        } = r;
        if let Err(e) = self.check(&prompt, &opts) {
            for events in std::iter::once(&events).chain(&more) {
                let _ = events.send(Event::Error(e.clone()));
            }
            return None;
        }
        let mut stop_ids = self.stop_ids.clone();
        stop_ids.extend(opts.stop_id.filter(|id| !stop_ids.contains(id)));
        if ignore_eos {
            opts.stop_id = None;
            stop_ids.clear();
        }
        let cache = match self.model.preallocated_cache(positions) {
            Ok(c) => c,
            Err(e) => {
                for events in std::iter::once(&events).chain(&more) {
                    let _ = events.send(Event::Error(format!("making the KV cache: {e}")));
                }
                return None;
            }
        };
        self.used_bytes += bytes;
        self.metrics
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        let tok = self.tok;
        let forks = more
            .into_iter()
            .enumerate()
            .map(|(i, events)| Fork {
                sampler: Sampler::new(&GenerateOptions {
                    seed: opts.seed.wrapping_add(1 + i as u64),
                    ..opts.clone()
                }),
                text: TextStream::new(tok, stop_ids.clone(), stops.clone()),
                events,
            })
            .collect();
        self.active.push(Sequence {
            ids: prompt,
            fed: 0,
            cache,
            bytes,
            sampler: Sampler::new(&opts),
            text: TextStream::new(tok, stop_ids, stops),
            produced: 0,
            min_tokens,
            penalties: (presence_penalty, frequency_penalty),
            counts: Default::default(),
            logprobs,
            pending: Vec::new(),
            events,
            last: arrived,
            forks,
        });
        None
    }

    /// The checks of a generation's settings and prompt, before anything is computed.
    fn check(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<(), String> {
        opts.validate().map_err(|e| e.to_string())?;
        check_prompt(self.model, prompt).map_err(|e| e.to_string())?;
        if prompt.len() >= context(self.model) {
            return Err(format!(
                "the prompt has {} tokens; the context holds {}",
                prompt.len(),
                context(self.model)
            ));
        }
        if opts.max_new_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// One step: drops the sequences whose clients left, feeds one prompt chunk of the oldest
    /// sequence still reading its prompt, and decodes one token of every generating sequence.
    fn step(&mut self) {
        self.retain(|s| {
            if s.events.is_closed() {
                eprintln!(
                    "generation dropped after {} tokens: the client disconnected",
                    s.produced
                );
                return false;
            }
            true
        });
        // The prompt chunk first, so that a request arriving while others run gets its first
        // token within about one step.
        let mut keep = vec![true; self.active.len()];
        let mut born = Vec::new();
        if let Some(i) = (0..self.active.len()).find(|&i| self.active[i].produced == 0) {
            let chunk = self.limits.prefill_chunk;
            let s = &self.active[i];
            let end = (s.fed + chunk).min(s.ids.len());
            if end == s.ids.len() {
                born = self.run(&[i], &mut keep, |s| s.fed..s.ids.len());
            } else {
                self.feed(i, end, &mut keep);
            }
        }
        let decoding: Vec<usize> = (0..self.active.len())
            .filter(|&i| keep[i] && self.active[i].decoding())
            .collect();
        for batch in decoding.chunks(MAX_ROWS) {
            self.metrics.batch.observe(batch.len() as f64);
            self.run(batch, &mut keep, |s| s.ids.len() - 1..s.ids.len());
        }
        let mut k = keep.into_iter();
        self.retain(|_| k.next().unwrap_or(false));
        self.active.extend(born);
    }

    /// Publishes the gauges.
    fn publish(&self, waiting: usize) {
        let m = self.metrics;
        m.active.store(self.active.len() as u64, Ordering::Relaxed);
        m.kv_bytes.store(self.used_bytes as u64, Ordering::Relaxed);
        m.waiting.store(waiting as u64, Ordering::Relaxed);
    }

    /// Feeds `ids[fed..end]` of sequence `i` (a prompt chunk that does not end the prompt).
    fn feed(&mut self, i: usize, end: usize, keep: &mut [bool]) {
        let model = self.model;
        let s = &mut self.active[i];
        let mut segs = [Segment {
            ids: &s.ids[s.fed..end],
            cache: &mut s.cache,
        }];
        match catch_unwind(AssertUnwindSafe(|| model.forward_segments(&mut segs))) {
            Ok(Ok(_)) => s.fed = end,
            Ok(Err(e)) => keep[i] = s.fail(e.to_string()),
            Err(_) => keep[i] = s.fail("internal error while reading the prompt".into()),
        }
    }

    /// One batched pass over sequences `batch`, each fed `ids[range(s)]`, then a token for each.
    fn run(
        &mut self,
        batch: &[usize],
        keep: &mut [bool],
        range: impl Fn(&Sequence) -> std::ops::Range<usize>,
    ) -> Vec<Sequence<'m>> {
        let (model, metrics) = (self.model, self.metrics);
        let ranges: Vec<_> = batch.iter().map(|&i| range(&self.active[i])).collect();
        let mut chosen: Vec<&mut Sequence> = self
            .active
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| batch.contains(i))
            .map(|(_, s)| s)
            .collect();
        let mut segs: Vec<Segment> = chosen
            .iter_mut()
            .zip(&ranges)
            .map(|(s, r)| Segment {
                ids: &s.ids[r.clone()],
                cache: &mut s.cache,
            })
            .collect();
        let logits = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Vec<f32>>, String> {
            let l = model
                .forward_segments(&mut segs)
                .map_err(|e| e.to_string())?;
            let l = l
                .to_dtype(candle_core::DType::F32)
                .map_err(|e| e.to_string())?;
            l.to_vec2().map_err(|e| e.to_string())
        }));
        drop(segs);
        let logits = match logits {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                for (&i, s) in batch.iter().zip(&chosen) {
                    keep[i] = s.fail(e.clone());
                }
                return Vec::new();
            }
            Err(_) => {
                for (&i, s) in batch.iter().zip(&chosen) {
                    keep[i] = s.fail("internal error while generating".into());
                }
                return Vec::new();
            }
        };
        let mut born = Vec::new();
        for ((&i, s), (l, r)) in batch.iter().zip(chosen).zip(logits.iter().zip(ranges)) {
            s.fed = r.end;
            if !s.forks.is_empty() {
                born.extend(s.fork(model, metrics, l));
            }
            keep[i] = s.accept(model, metrics, l);
        }
        born
    }

    /// Keeps the sequences `f` says to keep; the others free their slot and their cache's memory.
    fn retain(&mut self, mut f: impl FnMut(&Sequence) -> bool) {
        let mut freed = 0;
        self.active.retain(|s| {
            let keep = f(s);
            if !keep {
                freed += s.bytes;
            }
            keep
        });
        self.used_bytes -= freed;
    }
}

/// Runs the model thread until every sender of `jobs` is gone.
pub fn work(
    model: Gpt,
    tok: Arc<Tokenizer>,
    kind: Kind,
    mut jobs: mpsc::Receiver<Job>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    metrics
        .kv_budget
        .store(limits.kv_cache_bytes as u64, Ordering::Relaxed);
    // Generation ends at the end of a text or of a turn (the chat templates' end-of-turn tokens).
    let mut b = Batcher {
        model: &model,
        tok: &tok,
        stop_ids: tok.stop_ids(),
        limits,
        active: Vec::new(),
        used_bytes: 0,
        metrics: &metrics,
    };
    // A request that waits for memory, ahead of the queue.
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        while b.active.len() < limits.max_active.max(1) {
            let job = match waiting.pop_front() {
                Some(j) => j,
                None if b.active.is_empty() => {
                    b.publish(0);
                    match jobs.blocking_recv() {
                        Some(j) => j,
                        None => return,
                    }
                }
                None => match jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                },
            };
            match job {
                Job::Generate(r) => {
                    if let Some(job) = b.admit(r) {
                        waiting.push_front(job);
                        break;
                    }
                }
                Job::Classify { texts, reply } => {
                    let _ = reply.send(classify(&model, &tok, &kind, &texts));
                }
            }
        }
        b.step();
        b.publish(waiting.len());
    }
}

fn classify(
    model: &Gpt,
    tok: &Tokenizer,
    kind: &Kind,
    texts: &[String],
) -> Result<Vec<Prediction>, String> {
    match kind {
        Kind::Classifier(spec) => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            catch_unwind(AssertUnwindSafe(|| {
                predict(model, spec, tok, &refs, 16).map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err("internal error while classifying".into()))
        }
        Kind::Lm { .. } => Err("this model is not a classifier".into()),
    }
}
