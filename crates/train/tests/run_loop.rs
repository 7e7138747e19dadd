//! The one run loop, as every task sees it: the same evaluation steps for pretraining,
//! classification, instruction tuning and DPO; a non-finite step stops each of them without a
//! checkpoint or `best/` from it; the last good checkpoint stays intact; a damaged newest
//! checkpoint is named with the intact one before it; DPO resumes exactly; settings that cannot
//! train are refused before anything is written.
use candle_core::{Device, Tensor};
use scratchllm_model::{modeldir, DropoutRng, Gpt, GptConfig, Weights};
use scratchllm_train::classify::{
    finetune_classify, ClassifyConfig, ClassifyObserver, RunInfo, Trainable,
};
use scratchllm_train::dpo::{finetune_dpo, DpoConfig};
use scratchllm_train::instruct::{finetune_instruct, InstructConfig};
use scratchllm_train::run::{self, BatchLoss, BestBy, Evaluation, Task};
use scratchllm_train::{
    pretrain, Ending, EvalRecord, Observer, OptimConfig, PretrainConfig, RunConfig, StepRecord,
    Trainer,
};
use std::path::{Path, PathBuf};

/// Collects what a run reports; asks to stop after `stop_after` steps.
#[derive(Default)]
struct Log {
    steps: Vec<StepRecord>,
    evals: Vec<usize>,
    stop_after: Option<usize>,
}

impl Observer for Log {
    fn start(&mut self, _: usize, _: usize, _: usize, _: usize) {}
    fn step(&mut self, r: &StepRecord) {
        self.steps.push(r.clone());
    }
    fn eval(&mut self, r: &EvalRecord) {
        self.evals.push(r.step);
    }
    fn sample(&mut self, _: usize, _: &str) {}
    fn checkpoint(&mut self, _: &Path) {}
    fn stop_requested(&self) -> bool {
        self.stop_after.is_some_and(|n| self.steps.len() >= n)
    }
}

impl ClassifyObserver for Log {
    fn info(&mut self, _: &RunInfo) {}
}

fn tiny(ctx: usize) -> GptConfig {
    GptConfig {
        vocab_size: 50257,
        context_length: ctx,
        emb_dim: 32,
        n_heads: 2,
        n_layers: 1,
        drop_rate: 0.0,
        qkv_bias: false,
        tie_embeddings: false,
        num_classes: None,
        ..Default::default()
    }
}

/// A model directory of `tiny(ctx)`, with NaN in one weight when `poison`.
fn model_dir(dir: &Path, ctx: usize, poison: bool) -> PathBuf {
    let cfg = tiny(ctx);
    let mut t = Weights::random(&cfg, 3, &Device::Cpu)
        .unwrap()
        .into_tensors();
    if poison {
        let bad = Tensor::full(f32::NAN, (128, 32), &Device::Cpu).unwrap();
        t.insert("trf_blocks.0.ff.layers.0.weight".into(), bad);
    }
    let path = dir.join(if poison { "poisoned" } else { "model" });
    modeldir::save(&path, &cfg, &t, &scratchllm_tokenizer::gpt2().unwrap()).unwrap();
    path
}

fn loop_settings(eval_every: usize) -> RunConfig {
    RunConfig {
        eval_every,
        eval_batches: Some(1),
        checkpoint_every: 3,
        keep_checkpoints: 2,
        bf16: false,
        checkpoint_activations: false,
    }
}

fn pretrain_config(dir: &Path, model: &Path, eval_every: usize) -> PretrainConfig {
    let text = "Every effort moves you closer to the end of the story. ".repeat(40);
    let data = dir.join("corpus.txt");
    std::fs::write(&data, text).unwrap();
    PretrainConfig {
        version: 1,
        model: tiny(64),
        init: Some(model.to_path_buf()),
        tokenizer: None,
        data: vec![data],
        stride: 64,
        window: None,
        train_fraction: 0.8,
        shuffle: true,
        sample_prompt: None,
        sample_tokens: 0,
        optim: OptimConfig {
            max_steps: Some(8),
            ..OptimConfig::constant(10, 4, 1e-3, 0.1)
        },
        run: loop_settings(eval_every),
    }
}

fn classify_config(dir: &Path, model: &Path, eval_every: usize) -> ClassifyConfig {
    let mut text = String::new();
    for i in 0..40 {
        text += &format!("spam\tWIN a FREE prize {i}! Call now\nham\tsee you at {i} tonight\n");
    }
    let data = dir.join("toy.tsv");
    std::fs::write(&data, text).unwrap();
    let mut cfg = ClassifyConfig::book(model.to_str().unwrap(), &data);
    cfg.tune.trainable = Trainable::All;
    cfg.balance = false;
    // 56 training texts in batches of 14: 4 steps an epoch.
    cfg.optim = OptimConfig::constant(2, 14, 1e-3, 0.1);
    cfg.run = loop_settings(eval_every);
    cfg
}

fn entries(dir: &Path, n: usize, preference: bool) -> PathBuf {
    let list: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let word = ["cat", "dog", "sun"][i % 3];
            if preference {
                serde_json::json!({"instruction": "Name it.", "input": word, "output": word,
                                   "chosen": format!("Gladly: {word}."), "rejected": "No."})
            } else {
                serde_json::json!({"instruction": "Repeat the word.", "input": word, "output": word})
            }
        })
        .collect();
    let path = dir.join(if preference {
        "prefs.json"
    } else {
        "data.json"
    });
    std::fs::write(&path, serde_json::to_string(&list).unwrap()).unwrap();
    path
}

fn instruct_config(dir: &Path, model: &Path, eval_every: usize) -> InstructConfig {
    // 40 entries: 34 for training, in batches of 8: 4 steps an epoch.
    let mut cfg = InstructConfig::book(model.to_str().unwrap(), &entries(dir, 40, false));
    cfg.optim = OptimConfig::constant(2, 8, 1e-3, 0.1);
    cfg.run = loop_settings(eval_every);
    cfg.response_tokens = 0;
    cfg
}

fn dpo_config(dir: &Path, model: &Path, eval_every: usize) -> DpoConfig {
    // 24 pairs: 20 for training, in batches of 5: 4 steps an epoch.
    let mut cfg = DpoConfig::book(model.to_str().unwrap(), &entries(dir, 24, true));
    cfg.optim = OptimConfig::constant(2, 5, 1e-3, 0.0);
    cfg.run = loop_settings(eval_every);
    cfg
}

/// Runs each of the four tasks to its end (or its error) in `dir/<task>`.
fn run_all(
    dir: &Path,
    model: &Path,
    eval_every: usize,
) -> Vec<(&'static str, Log, Result<Ending, String>)> {
    let mut out = Vec::new();
    let mut log = Log::default();
    let r = pretrain(
        &dir.join("pretrain"),
        Some(pretrain_config(dir, model, eval_every)),
        &mut log,
    );
    out.push(("pretrain", log, r.map_err(|e| e.to_string())));
    let mut log = Log::default();
    let r = finetune_classify(
        &dir.join("classify"),
        Some(classify_config(dir, model, eval_every)),
        &mut log,
    );
    out.push(("classify", log, r.map(|r| r.0).map_err(|e| e.to_string())));
    let mut log = Log::default();
    let r = finetune_instruct(
        &dir.join("instruct"),
        Some(instruct_config(dir, model, eval_every)),
        &mut log,
    );
    out.push(("instruct", log, r.map(|r| r.0).map_err(|e| e.to_string())));
    let mut log = Log::default();
    let r = finetune_dpo(
        &dir.join("dpo"),
        Some(dpo_config(dir, model, eval_every)),
        &mut log,
    );
    out.push(("dpo", log, r.map(|r| r.0).map_err(|e| e.to_string())));
    out
}

#[test]
fn every_task_evaluates_at_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), 64, false);
    for (task, log, ending) in run_all(dir.path(), &model, 3) {
        assert!(
            matches!(ending, Ok(Ending::Finished { .. })),
            "{task}: {ending:?}"
        );
        assert_eq!(log.steps.len(), 8, "{task}");
        assert_eq!(
            log.evals,
            [0, 3, 6, 7],
            "{task}: every 3rd step from 0, and the last"
        );
    }
    // eval_every 0: at each epoch's end (classification, instruction tuning and DPO take 4
    // steps an epoch here; pretraining's epochs are as long as its windows make them).
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), 64, false);
    for (task, log, _) in run_all(dir.path(), &model, 0) {
        let ends: Vec<usize> = log
            .steps
            .iter()
            .filter(|r| {
                log.steps
                    .get(r.step + 1)
                    .is_none_or(|next| next.epoch != r.epoch)
            })
            .map(|r| r.step)
            .collect();
        assert_eq!(log.evals, ends, "{task}");
        if task != "pretrain" {
            assert_eq!(ends, [3, 7], "{task}");
        }
    }
}

#[test]
fn a_non_finite_first_step_stops_every_task_with_nothing_saved() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), 64, true);
    for (task, log, ending) in run_all(dir.path(), &model, 1) {
        let e = ending.expect_err(task);
        assert!(
            e.contains("step 0")
                && e.contains("not finite")
                && e.contains("No checkpoint was written yet"),
            "{task}: {e}"
        );
        assert!(log.steps.is_empty() && log.evals.is_empty(), "{task}");
        let run = dir.path().join(task);
        assert!(
            !run.join("best").exists(),
            "{task}: best/ from a non-finite step"
        );
        let checkpoints = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
        assert_eq!(checkpoints, 0, "{task}");
    }
}

/// A task whose `bad`-th batch has a NaN loss: it learns a single weight towards 1.
struct Flaky {
    calls: usize,
    bad: usize,
}

impl Task for Flaky {
    fn examples(&self) -> usize {
        64
    }
    fn tokens(&self) -> (usize, usize) {
        (64, 0)
    }
    fn loss(
        &mut self,
        model: &Gpt,
        _idx: &[usize],
        _rng: &DropoutRng,
    ) -> scratchllm_train::run::Result<BatchLoss> {
        self.calls += 1;
        let x = Tensor::new(&[[1u32, 2, 3]], model.device())?;
        let mut loss = model.forward(&x, None)?.sqr()?.mean_all()?; // (1, 3, V) -> ()
        if self.calls == self.bad {
            loss = (loss * f64::NAN)?;
        }
        Ok(BatchLoss {
            loss,
            tokens: 1,
            figures: vec![],
        })
    }
    fn evaluate(&mut self, _: &Gpt, _: Option<usize>) -> scratchllm_train::run::Result<Evaluation> {
        Ok(Evaluation {
            train_loss: 1.0,
            val_loss: 1.0 / self.calls as f32,
            ..Default::default()
        })
    }
    fn best_by(&self) -> BestBy {
        BestBy::ValLoss
    }
    fn save_model(&self, t: &Trainer, dir: &Path) -> scratchllm_train::run::Result<()> {
        modeldir::save(
            dir,
            &tiny(8),
            &t.weights(),
            &scratchllm_tokenizer::gpt2().unwrap(),
        )
    }
}

#[test]
fn a_non_finite_step_keeps_the_last_checkpoint_and_the_weights_intact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(8);
    let optim = OptimConfig::constant(1, 4, 1e-2, 0.0);
    let only_norm = |n: &str| n == "final_norm.scale";
    let weights = Weights::random(&cfg, 1, &Device::Cpu).unwrap();
    let mut trainer =
        Trainer::partly_frozen(&cfg, weights, None, &only_norm, optim.settings(64, false)).unwrap();
    let mut task = Flaky { calls: 0, bad: 6 };
    let run_cfg = RunConfig {
        eval_every: 1,
        ..loop_settings(1)
    };
    let e = run::train(
        dir.path(),
        &mut trainer,
        &mut task,
        &run_cfg,
        &mut Log::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("step 5") && e.contains("not finite"), "{e}");
    assert!(
        e.contains("step-0000003") && e.contains("(step 3), is intact"),
        "{e}"
    );
    // The bad step was not applied: the weights are those after step 4, finite.
    assert_eq!(trainer.step, 5);
    assert!(trainer.weight_norm().unwrap().is_finite());
    // best/ holds the model of a finite evaluation (the last one, at step 4).
    let best = modeldir::load(&dir.path().join("best"), &Device::Cpu).unwrap();
    let saved = best.weights.tensors()["final_norm.scale"].clone();
    let now = trainer.weights()["final_norm.scale"].clone();
    assert_eq!(
        saved.to_vec1::<f32>().unwrap(),
        now.to_vec1::<f32>().unwrap()
    );
    // Only finite checkpoints, step 3 the newest; resuming from it loads.
    let listed = scratchllm_train::checkpoint::list(&dir.path().join("checkpoints"));
    assert_eq!(listed.last().unwrap().0, 3);
}

#[test]
fn a_damaged_newest_checkpoint_names_the_intact_one_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), 64, false);
    let run = dir.path().join("run");
    let cfg = instruct_config(dir.path(), &model, 3);
    finetune_instruct(
        &run,
        Some(cfg),
        &mut Log {
            stop_after: Some(7),
            ..Default::default()
        },
    )
    .unwrap();
    // checkpoints at steps 6 (every 3rd) and 7 (the stop); damage the newest.
    let newest = run.join("checkpoints/step-0000007");
    std::fs::write(
        newest.join("optimizer.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let e = finetune_instruct(&run, None, &mut Log::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("step-0000007") && e.contains("damaged"), "{e}");
    assert!(
        e.contains("step-0000006") && e.contains("(step 6), is intact"),
        "{e}"
    );
}

#[test]
fn dpo_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), 64, false);
    let cfg = dpo_config(dir.path(), &model, 2);
    let whole = dir.path().join("whole");
    let mut log = Log::default();
    let (_, all) = finetune_dpo(&whole, Some(cfg.clone()), &mut log).unwrap();
    let parts = dir.path().join("parts");
    let mut first = Log {
        stop_after: Some(3),
        ..Default::default()
    };
    let (ending, none) = finetune_dpo(&parts, Some(cfg), &mut first).unwrap();
    assert!(matches!(ending, Ending::Stopped { .. }) && none.is_none());
    let mut rest = Log::default();
    let (_, resumed) = finetune_dpo(&parts, None, &mut rest).unwrap();
    let losses = |l: &[StepRecord]| l.iter().map(|r| r.train_loss).collect::<Vec<_>>();
    let mut joined = losses(&first.steps);
    joined.extend(losses(&rest.steps));
    assert_eq!(joined, losses(&log.steps));
    let (all, resumed) = (all.unwrap(), resumed.unwrap());
    assert_eq!(
        (all.train, all.val, all.test),
        (resumed.train, resumed.val, resumed.test)
    );
    // DPO keeps its best model by validation loss now.
    assert!(parts.join("best/config.json").is_file());
    let metrics = std::fs::read_to_string(parts.join("metrics.jsonl")).unwrap();
    let rewards = metrics
        .lines()
        .filter(|l| l.contains("\"reward_margin\""))
        .count();
    assert_eq!(rewards, 8, "one line with rewards per step");
}

#[test]
fn settings_that_cannot_train_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), 64, false);
    let base = pretrain_config(dir.path(), &model, 3);
    type Change = Box<dyn Fn(&mut PretrainConfig)>;
    let cases: Vec<(&str, Change)> = vec![
        ("--lr NaN", Box::new(|c| c.optim.lr = f64::NAN)),
        (
            "--lr 1000000000000000000000000000000",
            Box::new(|c| c.optim.lr = 1e30),
        ),
        ("--lr -1", Box::new(|c| c.optim.lr = -1.0)),
        (
            "--min-lr 0.1 must be between 0 and --lr 0.001",
            Box::new(|c| c.optim.min_lr = Some(0.1)),
        ),
        (
            "--grad-clip NaN",
            Box::new(|c| c.optim.grad_clip = Some(f32::NAN)),
        ),
        (
            "--weight-decay NaN",
            Box::new(|c| c.optim.weight_decay = f64::NAN),
        ),
        ("--stride must be at least 1", Box::new(|c| c.stride = 0)),
        (
            "--batch-size must be at least 1",
            Box::new(|c| c.optim.batch_size = 0),
        ),
        (
            "--keep-checkpoints",
            Box::new(|c| c.run.keep_checkpoints = 0),
        ),
    ];
    for (want, change) in cases {
        let mut cfg = base.clone();
        change(&mut cfg);
        let run = dir.path().join("bad");
        let e = pretrain(&run, Some(cfg), &mut Log::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
        assert!(
            !run.join("config.json").exists(),
            "{want}: config.json written"
        );
    }
    // A batch larger than the data: no step at all is refused, not an untrained model.
    let mut cfg = base.clone();
    cfg.optim.batch_size = 100_000;
    let e = pretrain(&dir.path().join("big"), Some(cfg), &mut Log::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("make no full batch of 100000") && e.contains("no step"),
        "{e}"
    );
    assert!(!dir.path().join("big/model").exists());
}
