//! A whole pretraining run on a small model: resuming after a stop reproduces the uninterrupted
//! run's losses exactly; bad settings get errors with the numbers.
use scratchllm_model::GptConfig;
use scratchllm_train::{
    pretrain, Ending, EvalRecord, Observer, OptimConfig, PretrainConfig, RunConfig, StepRecord,
};
use std::path::{Path, PathBuf};

/// Collects what a run reports; asks to stop after `stop_after` steps.
#[derive(Default)]
struct Log {
    steps: Vec<StepRecord>,
    evals: Vec<EvalRecord>,
    samples: usize,
    stop_after: Option<usize>,
}

impl Observer for Log {
    fn start(&mut self, _: usize, _: usize, _: usize, _: usize) {}
    fn step(&mut self, r: &StepRecord) {
        self.steps.push(r.clone());
    }
    fn eval(&mut self, r: &EvalRecord) {
        self.evals.push(r.clone());
    }
    fn sample(&mut self, _: usize, _: &str) {
        self.samples += 1;
    }
    fn checkpoint(&mut self, _: &Path) {}
    fn stop_requested(&self) -> bool {
        self.stop_after.is_some_and(|n| self.steps.len() >= n)
    }
}

fn corpus(dir: &Path) -> PathBuf {
    let text =
        "Every effort moves you closer to the end of the story. The painter put down his brush, \
                and the light of the studio fell on the unfinished canvas. "
            .repeat(12);
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(data: PathBuf) -> PretrainConfig {
    PretrainConfig {
        version: 1,
        model: GptConfig {
            vocab_size: 50257,
            context_length: 16,
            emb_dim: 32,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.1,
            qkv_bias: false,
            tie_embeddings: false,
            num_classes: None,
            ..Default::default()
        },
        init: None,
        tokenizer: None,
        data: vec![data],
        stride: 8,
        window: None,
        train_fraction: 0.8,
        shuffle: true,
        sample_prompt: Some("Every effort".into()),
        sample_tokens: 5,
        optim: OptimConfig {
            epochs: 3,
            max_steps: Some(14),
            batch_size: 2,
            grad_accum: 1,
            lr: 1e-3,
            weight_decay: 0.1,
            no_decay_bias_norm: false,
            warmup_steps: 3,
            warmup_start_lr: 1e-5,
            min_lr: Some(1e-5),
            grad_clip: Some(1.0),
            clip_after_warmup: true,
            seed: 7,
        },
        run: RunConfig {
            eval_every: 4,
            eval_batches: Some(2),
            checkpoint_every: 5,
            keep_checkpoints: 2,
            bf16: false,
            checkpoint_activations: false,
        },
    }
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("train_loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["train_loss"].to_string()))
        .collect()
}

#[test]
fn resuming_reproduces_the_uninterrupted_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(corpus(dir.path()));
    let whole = dir.path().join("whole");
    let mut log = Log::default();
    let end = pretrain(&whole, Some(cfg.clone()), &mut log).unwrap();
    assert!(matches!(end, Ending::Finished { .. }));
    assert_eq!(log.steps.len(), 14);
    assert_eq!(log.evals.len(), 5, "steps 0, 4, 8, 12 and the last");
    assert_eq!(log.samples, 5);
    assert!(log.steps.last().unwrap().train_loss < log.steps[0].train_loss);
    assert!(whole.join("loss.svg").is_file() && whole.join("model/config.json").is_file());

    let split = dir.path().join("split");
    let mut first = Log {
        stop_after: Some(6),
        ..Default::default()
    };
    assert!(matches!(
        pretrain(&split, Some(cfg.clone()), &mut first).unwrap(),
        Ending::Stopped { .. }
    ));
    // Starting afresh in a directory with checkpoints is refused.
    let e = pretrain(&split, Some(cfg.clone()), &mut Log::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let mut rest = Log::default();
    assert!(matches!(
        pretrain(&split, None, &mut rest).unwrap(),
        Ending::Finished { .. }
    ));
    assert_eq!(rest.steps.first().unwrap().step, 6);
    assert_eq!(losses(&split), losses(&whole));
    // Kept: the newest two checkpoints; the best model by validation loss is in best/.
    let kept = std::fs::read_dir(split.join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(kept, 2);
    let best_val = first
        .evals
        .iter()
        .chain(&rest.evals)
        .map(|e| e.val_loss)
        .fold(f32::INFINITY, f32::min);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(split.join("checkpoints/step-0000014/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["best_val_loss"].as_f64().unwrap() as f32, best_val);
    assert!(split.join("best/model.safetensors").is_file());
}

#[test]
fn too_little_text_is_an_error_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.txt");
    std::fs::write(
        &tiny,
        "Just a few words here, not enough for a window of context.",
    )
    .unwrap();
    let e = pretrain(
        &dir.path().join("run"),
        Some(config(tiny)),
        &mut Log::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("split has") && e.contains("context_length + 1 = 17"),
        "{e}"
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(corpus(dir.path()));
    // Weights with a NaN: the very first loss is not finite.
    let w = scratchllm_model::Weights::random(&cfg.model, 1, &candle_core::Device::Cpu).unwrap();
    let mut t = w.into_tensors();
    let bad = candle_core::Tensor::full(f32::NAN, (128, 32), &candle_core::Device::Cpu).unwrap();
    t.insert("trf_blocks.0.ff.layers.0.weight".into(), bad);
    let init = dir.path().join("init");
    scratchllm_model::modeldir::save(
        &init,
        &cfg.model,
        &t,
        &scratchllm_tokenizer::gpt2().unwrap(),
    )
    .unwrap();
    cfg.init = Some(init);
    let e = pretrain(&dir.path().join("run"), Some(cfg), &mut Log::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 0") && e.contains("not finite"), "{e}");
}

#[test]
fn bf16_autocast_runs_learn_like_fp32_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = config(corpus(dir.path()));
    let mut bf16 = fp32.clone();
    bf16.run.bf16 = true;
    let (a, b) = (dir.path().join("fp32"), dir.path().join("bf16"));
    let (mut la, mut lb) = (Log::default(), Log::default());
    pretrain(&a, Some(fp32), &mut la).unwrap();
    pretrain(&b, Some(bf16.clone()), &mut lb).unwrap();
    // The first losses agree to bf16 precision, then the runs part ways but both learn.
    let (first_a, first_b) = (la.steps[0].train_loss, lb.steps[0].train_loss);
    assert!(
        (first_a - first_b).abs() < 0.01 * first_a,
        "{first_a} vs {first_b}"
    );
    assert_ne!(
        losses(&a),
        losses(&b),
        "bf16 products must differ from f32 ones"
    );
    let (end_a, end_b) = (
        la.steps.last().unwrap().train_loss,
        lb.steps.last().unwrap().train_loss,
    );
    assert!(
        end_b < first_b && (end_a - end_b).abs() < 0.1 * end_a,
        "{end_a} vs {end_b}"
    );
    // The setting is saved with the run, so a resumed run multiplies in bf16 too.
    let split = dir.path().join("split");
    let mut first = Log {
        stop_after: Some(6),
        ..Default::default()
    };
    pretrain(&split, Some(bf16), &mut first).unwrap();
    pretrain(&split, None, &mut Log::default()).unwrap();
    assert_eq!(losses(&split), losses(&b));
}
