//! The book's chapter 5 loop on The Verdict from the Llama 3, Qwen3 and Gemma 3 fixtures
//! (../shared/fixtures/arch/*-tiny): every step's training loss equals PyTorch's to 1e-4 relative
//! (the fixture's `trace`: windows of 32, stride 32, batch 4, no shuffling, AdamW lr 1e-3 weight
//! decay 0.1 on every parameter, one epoch over the first 90% of the characters).
use scratchllm_testutil::shared;
use scratchllm_train::{
    pretrain, Ending, EvalRecord, Observer, OptimConfig, PretrainConfig, RunConfig, StepRecord,
};
use std::path::Path;

#[derive(Default)]
struct Log {
    losses: Vec<f32>,
}

impl Observer for Log {
    fn start(&mut self, _: usize, _: usize, _: usize, _: usize) {}
    fn step(&mut self, r: &StepRecord) {
        self.losses.push(r.train_loss);
    }
    fn eval(&mut self, _: &EvalRecord) {}
    fn sample(&mut self, _: usize, _: &str) {}
    fn checkpoint(&mut self, _: &Path) {}
    fn stop_requested(&self) -> bool {
        false
    }
}

fn trace(name: &str) {
    let (Some(dir), Some(verdict)) = (
        shared(&format!("fixtures/arch/{name}")),
        shared("data/the-verdict.txt"),
    ) else {
        return;
    };
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let t = &expected["trace"];
    let want: Vec<f64> = t["train_loss_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let model = scratchllm_model::modeldir::load(&dir, &candle_core::Device::Cpu)
        .unwrap()
        .config;
    let ctx = t["context_length"].as_u64().unwrap() as usize;
    assert_eq!(ctx, 32);
    let cfg = PretrainConfig {
        version: 1,
        model,
        init: Some(dir.clone()),
        tokenizer: None,
        data: vec![verdict],
        stride: t["stride"].as_u64().unwrap() as usize,
        window: Some(ctx),
        train_fraction: 0.9,
        shuffle: false,
        sample_prompt: None,
        sample_tokens: 0,
        optim: OptimConfig::constant(
            1,
            t["batch_size"].as_u64().unwrap() as usize,
            t["lr"].as_f64().unwrap(),
            t["weight_decay"].as_f64().unwrap(),
        ),
        run: RunConfig::new(0, Some(1), 0),
    };
    let run = tempfile::tempdir().unwrap();
    let mut log = Log::default();
    let end = pretrain(&run.path().join("run"), Some(cfg), &mut log).unwrap();
    assert!(matches!(end, Ending::Finished { .. }));
    assert_eq!(log.losses.len(), want.len(), "{name}: steps");
    for (s, (got, want)) in log.losses.iter().zip(&want).enumerate() {
        let rel = ((*got as f64 - want) / want).abs();
        assert!(
            rel < 1e-4,
            "{name} step {s}: loss {got} vs PyTorch {want} (rel {rel:.2e})"
        );
    }
}

#[test]
fn llama3_trains_as_pytorch() {
    trace("llama3-tiny");
}

#[test]
fn qwen3_trains_as_pytorch() {
    trace("qwen3-tiny");
}

#[test]
fn gemma3_trains_as_pytorch() {
    trace("gemma3-tiny");
}
