//! The server's sampling driven with arbitrary request settings and arbitrary logits (NaN, ±inf,
//! all equal, huge, tiny): a request is refused with a 400 naming the field, or the engine ends
//! its generation with `Done` (good logits) or an `Error` naming the model (bad ones); never a
//! panic, never the engine's "internal error" (a caught panic).
use crate::api::Fields;
use crate::engine::{work, Event, Finish, Job, Kind, Limits, Request};
use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use scratchllm_model::{Gpt, GptConfig, PromptStyle, Weights};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A model whose logits are `logits` at every position: the final LayerNorm's scale is 0 and its
/// shift the unit vector e0, so each hidden state is exactly e0, and the untied head's first
/// column is `logits` (its other columns 0), so the head gives exactly `logits`.
fn model_with_logits(logits: &[f32]) -> Gpt {
    let (v, c) = (logits.len(), 4);
    let cfg = GptConfig {
        vocab_size: v,
        context_length: 8,
        emb_dim: c,
        n_heads: 1,
        n_layers: 1,
        drop_rate: 0.0,
        qkv_bias: false,
        tie_embeddings: false,
        num_classes: None,
        ..Default::default()
    };
    let dev = &Device::Cpu;
    let mut t = Weights::random(&cfg, 0, dev)
        .expect("a valid tiny config")
        .into_tensors();
    let mut e0 = vec![0f32; c];
    e0[0] = 1.0;
    let mut head = vec![0f32; v * c];
    for (row, &x) in logits.iter().enumerate() {
        head[row * c] = x;
    }
    t.insert(
        "final_norm.scale".into(),
        Tensor::zeros(c, DType::F32, dev).unwrap(),
    );
    t.insert(
        "final_norm.shift".into(),
        Tensor::from_vec(e0, c, dev).unwrap(),
    );
    t.insert(
        "out_head.weight".into(),
        Tensor::from_vec(head, (v, c), dev).unwrap(),
    );
    Gpt::new(&cfg, &Weights::new(t, "logits-under-test")).expect("the tensors fit the config")
}

/// The engine's events for one generation after prompt [0].
fn run_engine(model: Gpt, opts: scratchllm_model::GenerateOptions) -> Vec<Event> {
    run(model, opts, false, 0, 0.0, None)
}

/// The engine's events for one request after prompt [0], with vLLM's `ignore_eos` and
/// `min_tokens`, OpenAI's presence penalty and log-probabilities.
fn run(
    model: Gpt,
    opts: scratchllm_model::GenerateOptions,
    ignore_eos: bool,
    min_tokens: usize,
    presence_penalty: f32,
    logprobs: Option<usize>,
) -> Vec<Event> {
    let tok = Arc::new(scratchllm_tokenizer::gpt2().unwrap());
    let (jobs, rx) = mpsc::channel(1);
    let (events, mut out) = mpsc::unbounded_channel();
    jobs.try_send(Job::Generate(Request {
        prompt: vec![0],
        opts,
        stops: Vec::new(),
        ignore_eos,
        min_tokens,
        presence_penalty,
        frequency_penalty: 0.0,
        logprobs,
        events,
        more: Vec::new(),
        arrived: std::time::Instant::now(),
    }))
    .map_err(|_| "queue")
    .unwrap();
    drop(jobs);
    let limits = Limits {
        max_active: 2,
        prefill_chunk: 4,
        kv_cache_bytes: 1 << 20,
    };
    let style = PromptStyle::Alpaca;
    work(
        model,
        tok,
        Kind::Lm { style },
        rx,
        limits,
        Default::default(),
    );
    let mut got = Vec::new();
    while let Ok(ev) = out.try_recv() {
        got.push(ev);
    }
    got
}

fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -20.0f32..20.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(f32::MIN),
        1 => Just(1e-40f32),
        1 => any::<f32>(),
    ]
}

fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(logit(), 1..24),
        (logit(), 1usize..24).prop_map(|(x, n)| vec![x; n]),
    ]
}

/// A request field: absent, null, a number in or out of range, an integer, or a wrong type.
/// Absent most often, so that about a third of the requests pass all four fields and reach the
/// engine.
fn field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        10 => Just(None),
        1 => Just(Some(Value::Null)),
        3 => (-0.5f64..2.5).prop_map(|x| Some(json!(x))),
        1 => prop_oneof![Just(0.0f64), Just(1e-50), Just(1e-40), Just(2.0), Just(1e308)]
            .prop_map(|x| Some(json!(x))),
        2 => any::<u64>().prop_map(|x| Some(json!(x))),
        1 => (0u64..60).prop_map(|x| Some(json!(x))),
        1 => any::<i64>().prop_map(|x| Some(json!(x))),
        1 => Just(Some(json!("1"))),
    ]
}

fn bad_logits(v: &[f32]) -> bool {
    v.iter().any(|x| x.is_nan())
        || v.contains(&f32::INFINITY)
        || v.iter().all(|&x| x == f32::NEG_INFINITY)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_settings_and_any_logits_end_in_a_token_or_a_named_error(
        v in logits(),
        temperature in field(),
        top_p in field(),
        top_k in field(),
        seed in field(),
    ) {
        let mut body = Map::new();
        for (name, value) in [("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("seed", seed)] {
            if let Some(value) = value {
                body.insert(name.into(), value);
            }
        }
        let opts = match crate::sampling(&Fields(&body), 3, None) {
            Ok(opts) => opts,
            Err(e) => {
                // Refused: a 400 that names one of the fields given.
                prop_assert_eq!(e.status.as_u16(), 400);
                let said = e.body().to_string();
                prop_assert!(["temperature", "top_p", "top_k", "seed"].iter().any(|f| said.contains(f)), "{}", said);
                return Ok(());
            }
        };
        prop_assert!(opts.validate().is_ok(), "{:?} from {:?}", opts, body);
        let events = run_engine(model_with_logits(&v), opts);
        match events.last() {
            Some(Event::Done { completion_tokens, .. }) => {
                prop_assert!(!bad_logits(&v), "generated from {:?}", v);
                prop_assert_eq!(*completion_tokens, 3);
            }
            Some(Event::Error(m)) => {
                prop_assert!(bad_logits(&v), "{} for {:?}", m, v);
                prop_assert!(m.starts_with("the weights of logits-under-test produce"), "{}", m);
            }
            other => prop_assert!(false, "the generation ended with {:?}", other),
        }
    }
}

#[test]
fn the_model_under_test_gives_exactly_its_logits() {
    let want = [1.5f32, -2.0, 1e30, f32::NEG_INFINITY, 0.0];
    let model = model_with_logits(&want);
    let x = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
    let got: Vec<Vec<f32>> = model
        .forward(&x, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for row in got {
        assert_eq!(row, want);
    }
}

/// [`run`] with GPT-2's end-of-text as the stop id and at most `max` tokens.
fn run_with(
    model: Gpt,
    max: usize,
    ignore_eos: bool,
    min_tokens: usize,
    presence: f32,
) -> Vec<Event> {
    let opts = scratchllm_model::GenerateOptions {
        max_new_tokens: max,
        stop_id: Some(50256),
        ..Default::default()
    };
    run(model, opts, ignore_eos, min_tokens, presence, None)
}

/// The text and the end of a generation's events.
fn text_and_end(events: &[Event]) -> (String, Option<(Finish, usize)>) {
    let mut text = String::new();
    let mut end = None;
    for ev in events {
        match ev {
            Event::Text { text: t, .. } => text += t,
            Event::Done {
                finish,
                completion_tokens,
                ..
            } => end = Some((*finish, *completion_tokens)),
            Event::Error(m) => panic!("{m}"),
        }
    }
    (text, end)
}

#[test]
fn end_of_text_min_tokens_ignore_eos_and_presence_penalty() {
    // GPT-2's vocabulary; end-of-text (50256) is the best token, then "!" (0) then '"' (1).
    let mut logits = vec![-10.0f32; 50257];
    logits[50256] = 3.0;
    logits[0] = 2.0;
    logits[1] = 1.0;
    let m = || model_with_logits(&logits);
    // End-of-text at once: one token, not sent.
    assert_eq!(
        text_and_end(&run_with(m(), 5, false, 0, 0.0)),
        (String::new(), Some((Finish::Stop, 1)))
    );
    // min_tokens 3 (vLLM's: no end-of-text while fewer than 3 tokens are out): "!!!", then it.
    assert_eq!(
        text_and_end(&run_with(m(), 5, false, 3, 0.0)),
        ("!!!".into(), Some((Finish::Stop, 4)))
    );
    // ignore_eos: end-of-text is text like any other, up to the limit.
    let (text, end) = text_and_end(&run_with(m(), 4, true, 0, 0.0));
    assert_eq!(end, Some((Finish::Length, 4)));
    assert_eq!(text, "<|endoftext|>".repeat(4));
    // A presence penalty of 1.5, once per token seen, with ignore_eos: end-of-text (3.0), then
    // "!" (2.0 beats 3.0 - 1.5), then end-of-text (1.5 beats 2.0 - 1.5 and 1.0), and again.
    let (text, end) = text_and_end(&run_with(m(), 4, true, 0, 1.5));
    assert_eq!(end, Some((Finish::Length, 4)));
    assert_eq!(text, "<|endoftext|>!<|endoftext|><|endoftext|>");
}

#[test]
fn log_probabilities_are_the_models_whatever_changes_the_sampling() {
    // End-of-text (50256) best, then "!" (0), then '"' (1); min_tokens 3 masks end-of-text and a
    // presence penalty lowers "!" once it is out, but the log-probabilities are the model's.
    let mut logits = vec![-10.0f32; 50257];
    logits[50256] = 3.0;
    logits[0] = 2.0;
    logits[1] = 1.0;
    let opts = scratchllm_model::GenerateOptions {
        max_new_tokens: 8,
        stop_id: Some(50256),
        ..Default::default()
    };
    let events = run(model_with_logits(&logits), opts, false, 3, 0.5, Some(2));
    let lse = (logits.iter().map(|&x| (x as f64).exp()).sum::<f64>()).ln();
    let lp = |id: usize| (logits[id] as f64 - lse) as f32;
    let mut tokens = Vec::new();
    for ev in &events {
        match ev {
            Event::Text { text, logprobs } => {
                // Each piece carries the tokens whose text it is.
                let ids: Vec<u32> = logprobs.iter().map(|t| t.id).collect();
                assert_eq!(
                    scratchllm_tokenizer::gpt2().unwrap().decode(&ids).unwrap(),
                    *text
                );
                tokens.extend(logprobs.iter().cloned());
            }
            Event::Done {
                logprobs,
                finish,
                completion_tokens,
            } => {
                assert_eq!((*finish, *completion_tokens), (Finish::Stop, 4));
                tokens.extend(logprobs.iter().cloned());
            }
            Event::Error(m) => panic!("{m}"),
        }
    }
    // "!" with the penalty ("!" 1.5 beats '"' 1.0), three times; then end-of-text, not sent as
    // text but with its log-probability at the end.
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, [0, 0, 0, 50256]);
    for t in &tokens {
        assert_eq!(t.logprob, lp(t.id as usize));
        assert_eq!(t.top, [(50256, lp(50256)), (0, lp(0))]);
    }
}
