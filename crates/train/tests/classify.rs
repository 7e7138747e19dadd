//! Classification fine-tuning and LoRA: PyTorch's losses for the book's recipe, LoRA invariants,
//! a whole small run that learns, and an exact resume (tables: `classify_data.rs`).
use candle_core::{Device, Tensor};
use scratchllm_model::classifier::{class_logits, ClassifierSpec, TokenPosition};
use scratchllm_model::lora::{self, LoraSpec, Target};
use scratchllm_model::{weights, Gpt, GptConfig, Weights};
use scratchllm_testutil::shared;
use scratchllm_train::classify::{
    finetune_classify, ClassifyConfig, ClassifyObserver, RunInfo, Trainable,
};
use scratchllm_train::{
    AdamWConfig, Ending, EvalRecord, Loader, Observer, Schedule, StepRecord, TrainSettings, Trainer,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/classify-reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor(v: &serde_json::Value) -> Tensor {
    match v.as_array().unwrap().first() {
        Some(serde_json::Value::Array(_)) => {
            let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
            let (r, c) = (rows.len(), rows[0].len());
            Tensor::from_vec(rows.concat(), (r, c), &Device::Cpu).unwrap()
        }
        _ => {
            let xs: Vec<f32> = serde_json::from_value(v.clone()).unwrap();
            let n = xs.len();
            Tensor::from_vec(xs, n, &Device::Cpu).unwrap()
        }
    }
}

/// The train-trace fixture model with the reference's 2-class head; `None` skips.
fn reference_model(r: &serde_json::Value) -> Option<(GptConfig, HashMap<String, Tensor>)> {
    let init = shared("fixtures/train-trace/init.safetensors")?;
    let c = &r["config"];
    let cfg = GptConfig {
        vocab_size: c["vocab_size"].as_u64().unwrap() as usize,
        context_length: c["context_length"].as_u64().unwrap() as usize,
        emb_dim: c["emb_dim"].as_u64().unwrap() as usize,
        n_heads: c["n_heads"].as_u64().unwrap() as usize,
        n_layers: c["n_layers"].as_u64().unwrap() as usize,
        drop_rate: 0.0,
        qkv_bias: false,
        tie_embeddings: false,
        num_classes: Some(2),
        ..Default::default()
    };
    let mut t = weights::read_safetensors(&init, &Device::Cpu).unwrap();
    for (name, v) in r["head"].as_object().unwrap() {
        t.insert(name.clone(), tensor(v));
    }
    Some((cfg, t))
}

fn reference_data(r: &serde_json::Value) -> (Vec<Vec<u32>>, Vec<i64>, ClassifierSpec) {
    let ids: Vec<Vec<u32>> = serde_json::from_value(r["ids"].clone()).unwrap();
    let labels: Vec<i64> = serde_json::from_value(r["labels"].clone()).unwrap();
    let spec = ClassifierSpec {
        labels: vec!["ham".into(), "spam".into()],
        token_position: TokenPosition::Last,
        average_embeddings: false,
        max_length: ids.iter().map(Vec::len).max().unwrap(),
        pad_id: 50256,
    };
    (ids, labels, spec)
}

fn settings(lr: f64) -> TrainSettings {
    TrainSettings {
        epochs: 1,
        max_steps: None,
        loader: Loader {
            batch_size: 4,
            shuffle: false,
            drop_last: true,
            seed: 0,
        },
        adamw: AdamWConfig {
            lr,
            weight_decay: 0.1,
            ..Default::default()
        },
        schedule: Schedule::constant(lr),
        grad_clip: None,
        clip_after_warmup: false,
        grad_accum: 1,
        no_decay_bias_norm: false,
    }
}

/// Trains on the reference batches in order; returns each step's loss.
fn train_reference(
    trainer: &mut Trainer,
    ids: &[Vec<u32>],
    labels: &[i64],
    spec: &ClassifierSpec,
) -> Vec<f32> {
    let mut losses = Vec::new();
    for k in 0..ids.len() / 4 {
        let seqs: Vec<&[u32]> = ids[4 * k..4 * k + 4].iter().map(Vec::as_slice).collect();
        let (x, lengths) = spec.batch(&seqs, &Device::Cpu).unwrap();
        let y = labels[4 * k..4 * k + 4].to_vec();
        let r = trainer
            .step_with(1, 0, &mut |m, _, rng| {
                let logits = class_logits(m, spec, &x, &lengths, Some(rng))?;
                Ok((scratchllm_train::loss::cross_entropy(&logits, &y, -100)?, 0))
            })
            .unwrap();
        losses.push(r.train_loss);
    }
    losses
}

fn assert_close(ours: &[f32], theirs: &serde_json::Value, tol: f32, what: &str) {
    let theirs: Vec<f32> = serde_json::from_value(theirs.clone()).unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{what} [{i}]: ours {a}, PyTorch {b}"
        );
    }
}

#[test]
fn the_books_recipe_gives_pytorchs_logits_and_losses() {
    let r = reference();
    let Some((cfg, t)) = reference_model(&r) else {
        return;
    };
    let (ids, labels, spec) = reference_data(&r);
    // Our tokenizer gives the reference's ids for the same SMS lines.
    if let Some(text) = scratchllm_testutil::shared_text("data/sms-spam-collection.tsv") {
        let tok = scratchllm_tokenizer::gpt2().unwrap();
        for (line, want) in text.lines().zip(&ids) {
            let text = line.split_once('\t').unwrap().1;
            assert_eq!(
                &spec.encode(&tok, text).unwrap()[..want.len()],
                want.as_slice()
            );
        }
    }
    let gpt = Gpt::new(&cfg, &Weights::new(t.clone(), "reference")).unwrap();
    let seqs: Vec<&[u32]> = ids[..4].iter().map(Vec::as_slice).collect();
    let (x, lengths) = spec.batch(&seqs, &Device::Cpu).unwrap();
    let logits = class_logits(&gpt, &spec, &x, &lengths, None).unwrap();
    let flat: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(r["first_batch_last_logits"].clone()).unwrap();
    assert_close(&flat, &serde_json::json!(want.concat()), 1e-4, "logits");

    let n_layers = cfg.n_layers;
    let mut trainer = Trainer::partly_frozen(
        &cfg,
        Weights::new(t, "reference"),
        None,
        &|n| Trainable::LastBlock.selects(n, n_layers),
        settings(1e-3),
    )
    .unwrap();
    let losses = train_reference(&mut trainer, &ids, &labels, &spec);
    assert_close(&losses, &r["last_block_losses"], 1e-5, "last-block losses");
}

#[test]
fn lora_gives_pytorchs_losses_and_the_books_parameter_count() {
    let r = reference();
    let Some((cfg, mut t)) = reference_model(&r) else {
        return;
    };
    let (ids, labels, spec) = reference_data(&r);
    for (name, v) in r["lora"]["adapters"].as_object().unwrap() {
        t.insert(name.clone(), tensor(v));
    }
    let lspec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
    };
    // Our initialization draws as many adapter parameters, in the same places.
    let ours = lora::init(&cfg, &lspec, 0, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = ours.keys().collect();
    let mut theirs: Vec<&String> = r["lora"]["adapters"].as_object().unwrap().keys().collect();
    names.sort();
    theirs.sort();
    assert_eq!(names, theirs);
    let mut trainer = Trainer::partly_frozen(
        &cfg,
        Weights::new(t, "reference"),
        Some(&lspec),
        &|n| Trainable::Lora.selects(n, cfg.n_layers),
        settings(1e-3),
    )
    .unwrap();
    assert_eq!(
        trainer.trainable_params() as u64,
        r["lora"]["trainable_params"].as_u64().unwrap()
    );
    let losses = train_reference(&mut trainer, &ids, &labels, &spec);
    assert_close(&losses, &r["lora"]["losses"], 1e-5, "LoRA losses");
}

fn tiny_classifier() -> (GptConfig, HashMap<String, Tensor>) {
    let cfg = GptConfig {
        vocab_size: 300,
        context_length: 16,
        emb_dim: 32,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: true,
        tie_embeddings: false,
        num_classes: Some(3),
        ..Default::default()
    };
    let w = Weights::random(
        &GptConfig {
            num_classes: None,
            ..cfg.clone()
        },
        5,
        &Device::Cpu,
    )
    .unwrap();
    let mut t = w.into_tensors();
    t.insert(
        "out_head.weight".into(),
        Tensor::randn(0f32, 0.2, (3, 32), &Device::Cpu).unwrap(),
    );
    t.insert(
        "out_head.bias".into(),
        Tensor::randn(0f32, 0.2, 3, &Device::Cpu).unwrap(),
    );
    (cfg, t)
}

fn spec(position: TokenPosition, average: bool) -> ClassifierSpec {
    ClassifierSpec {
        labels: vec!["a".into(), "b".into(), "c".into()],
        token_position: position,
        average_embeddings: average,
        max_length: 12,
        pad_id: 299,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn class_logits_read_the_chosen_positions() {
    let (cfg, t) = tiny_classifier();
    let gpt = Gpt::new(&cfg, &Weights::new(t, "test")).unwrap();
    let seqs: [&[u32]; 2] = [&[1, 2, 3, 4, 5], &[7, 8]];
    for (position, average) in [
        (TokenPosition::Last, false),
        (TokenPosition::First, false),
        (TokenPosition::LastNonPad, false),
        (TokenPosition::LastNonPad, true),
    ] {
        let s = spec(position, average);
        let (x, lengths) = s.batch(&seqs, &Device::Cpu).unwrap();
        let ours = class_logits(&gpt, &s, &x, &lengths, None).unwrap();
        // By hand: the full per-position logits, then the position (or the mean over the text).
        let all = gpt.forward(&x, None).unwrap(); // (B, T, classes)
        let t = x.dims()[1];
        let rows: Vec<Tensor> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let row = all.get(i).unwrap();
                if average {
                    row.narrow(0, 0, n).unwrap().mean(0).unwrap()
                } else {
                    let p = match position {
                        TokenPosition::Last => t - 1,
                        TokenPosition::First => 0,
                        TokenPosition::LastNonPad => n - 1,
                    };
                    row.get(p).unwrap()
                }
            })
            .collect();
        let want = Tensor::stack(&rows, 0).unwrap();
        assert!(
            max_diff(&ours, &want) < 1e-5,
            "{position:?} average {average}"
        );
        if position == TokenPosition::Last && !average {
            assert_eq!(t, 12, "`last` pads to max_length as the book does");
        } else {
            assert_eq!(t, 5, "other readings pad to the longest text of the batch");
        }
    }
}

#[test]
fn lora_with_zero_b_changes_nothing_and_merging_keeps_the_logits() {
    let (cfg, t) = tiny_classifier();
    let lspec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
    };
    let x = Tensor::new(&[[3u32, 9, 27, 81, 243, 5]], &Device::Cpu).unwrap();
    let plain = Gpt::new(&cfg, &Weights::new(t.clone(), "plain"))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    let mut with = t.clone();
    with.extend(lora::init(&cfg, &lspec, 1, &Device::Cpu).unwrap());
    let adapted = Gpt::with_lora(&cfg, &Weights::new(with.clone(), "lora"), Some(&lspec))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    assert_eq!(
        max_diff(&plain, &adapted),
        0.0,
        "B = 0: the adapters add nothing"
    );

    // Non-zero B: the adapted model differs, and its merge computes the same logits.
    for (name, b) in with.iter_mut().filter(|(n, _)| n.ends_with(".lora_B")) {
        *b = Tensor::randn(0f32, 0.3, b.dims(), &Device::Cpu).unwrap();
        assert!(lora::is_adapter(name));
    }
    let adapted = Gpt::with_lora(&cfg, &Weights::new(with.clone(), "lora"), Some(&lspec))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    assert!(max_diff(&plain, &adapted) > 1e-3);
    let (merged_cfg, merged) = lora::merge(&cfg, &with, &lspec).unwrap();
    assert!(merged.keys().all(|n| !lora::is_adapter(n)));
    let merged = Gpt::new(&merged_cfg, &Weights::new(merged, "merged"))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    assert!(max_diff(&adapted, &merged) < 1e-5);

    // A tied language-model head with an adapter becomes a separate head when merged.
    let lm = GptConfig {
        num_classes: None,
        tie_embeddings: true,
        ..cfg.clone()
    };
    let mut lm_t = Weights::random(&lm, 3, &Device::Cpu)
        .unwrap()
        .into_tensors();
    lm_t.extend(lora::init(&lm, &lspec, 2, &Device::Cpu).unwrap());
    for (_, b) in lm_t.iter_mut().filter(|(n, _)| n.ends_with(".lora_B")) {
        *b = Tensor::randn(0f32, 0.3, b.dims(), &Device::Cpu).unwrap();
    }
    let adapted = Gpt::with_lora(&lm, &Weights::new(lm_t.clone(), "lm"), Some(&lspec))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    let (mcfg, m) = lora::merge(&lm, &lm_t, &lspec).unwrap();
    assert!(!mcfg.tie_embeddings);
    let merged = Gpt::new(&mcfg, &Weights::new(m, "merged"))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    assert!(max_diff(&adapted, &merged) < 1e-4);
}

#[test]
fn only_the_chosen_weights_change() {
    for mode in [Trainable::LastBlock, Trainable::LastLayer, Trainable::Lora] {
        let (cfg, mut t) = tiny_classifier();
        let lspec = LoraSpec {
            rank: 2,
            alpha: 4.0,
            targets: vec![Target::Attention],
        };
        let lora_on = mode == Trainable::Lora;
        if lora_on {
            t.extend(lora::init(&cfg, &lspec, 1, &Device::Cpu).unwrap());
        }
        let before = t.clone();
        let s = spec(TokenPosition::LastNonPad, false);
        let mut trainer = Trainer::partly_frozen(
            &cfg,
            Weights::new(t, "test"),
            lora_on.then_some(&lspec),
            &|n| mode.selects(n, cfg.n_layers),
            settings(1e-2),
        )
        .unwrap();
        let seqs: [&[u32]; 3] = [&[1, 2, 3], &[4, 5, 6, 7], &[8]];
        let (x, lengths) = s.batch(&seqs, &Device::Cpu).unwrap();
        for _ in 0..2 {
            trainer
                .step_with(1, 0, &mut |m, _, rng| {
                    let logits = class_logits(m, &s, &x, &lengths, Some(rng))?;
                    Ok((
                        scratchllm_train::loss::cross_entropy(&logits, &[0, 1, 2], -100)?,
                        0,
                    ))
                })
                .unwrap();
        }
        let after = trainer.weights();
        assert_eq!(after.len(), before.len());
        for (name, old) in &before {
            let changed = max_diff(old, &after[name]) > 0.0;
            let chosen = mode.selects(name, cfg.n_layers);
            // LoRA's B starts at zero and A gets no gradient at the first step; both move by the second.
            assert_eq!(changed, chosen, "{mode:?}: {name} changed: {changed}");
        }
    }
}

/// Collects what a run reports; asks to stop after `stop_after` steps.
#[derive(Default)]
struct Log {
    steps: Vec<StepRecord>,
    evals: Vec<EvalRecord>,
    info: Option<RunInfo>,
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
    fn sample(&mut self, _: usize, _: &str) {}
    fn checkpoint(&mut self, _: &Path) {}
    fn stop_requested(&self) -> bool {
        self.stop_after.is_some_and(|n| self.steps.len() >= n)
    }
}

impl ClassifyObserver for Log {
    fn info(&mut self, i: &RunInfo) {
        self.info = Some(i.clone());
    }
}

/// A small, learnable task: "spam" texts talk about prizes and numbers, "ham" ones about meeting.
fn toy_data(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..40 {
        text += &format!("spam\tWIN a FREE prize {i}! Call 0906{i:04} now to claim your cash\n");
        text += &format!(
            "ham\tare we still meeting at {} tonight? see you soon\n",
            i % 12 + 1
        );
    }
    let path = dir.join("toy.tsv");
    std::fs::write(&path, text).unwrap();
    path
}

fn toy_config(data: &Path) -> ClassifyConfig {
    let mut cfg = ClassifyConfig::book("unused", data);
    cfg.tune.model_config = Some(GptConfig {
        vocab_size: 50257,
        context_length: 32,
        emb_dim: 32,
        n_heads: 2,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: false,
        tie_embeddings: false,
        num_classes: None,
        ..Default::default()
    });
    cfg.tune.trainable = Trainable::All;
    cfg.optim.lr = 2e-3;
    cfg.optim.epochs = 4;
    cfg.balance = false;
    cfg.token_position = TokenPosition::LastNonPad;
    cfg.run.checkpoint_every = 5;
    cfg
}

#[test]
fn a_tiny_model_learns_to_classify_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy_data(dir.path());
    let cfg = toy_config(&data);

    let whole = dir.path().join("whole");
    let mut log = Log::default();
    let (ending, results) = finetune_classify(&whole, Some(cfg.clone()), &mut log).unwrap();
    let results = results.unwrap();
    let Ending::Finished { model_dir } = ending else {
        panic!("the run did not finish");
    };
    let info = log.info.as_ref().unwrap();
    assert_eq!((info.train, info.val, info.test), (56, 8, 16));
    assert_eq!(log.steps.len(), 4 * 7);
    let first = log.evals.first().unwrap();
    let last = log.evals.last().unwrap();
    assert!(
        last.train_loss < first.train_loss && last.train_loss < 0.3,
        "{log:?}",
        log = log.evals
    );
    assert!(results.train_accuracy >= 0.9, "{results:?}");
    assert!(results.test_accuracy >= 0.8, "{results:?}");
    for f in [
        "loss.svg",
        "accuracy.svg",
        "metrics.jsonl",
        "results.json",
        "best/config.json",
    ] {
        assert!(whole.join(f).is_file(), "{f}");
    }

    // The saved classifier predicts what the run measured.
    let files = scratchllm_model::modeldir::load(&model_dir, &Device::Cpu).unwrap();
    let spec = files.classifier.clone().unwrap();
    assert_eq!(spec.labels, ["ham", "spam"]);
    let gpt = Gpt::new(&files.config, &files.weights).unwrap();
    let p = scratchllm_model::classifier::predict(
        &gpt,
        &spec,
        &files.tokenizer,
        &[
            "WIN a FREE prize 77! Call 09060077 now to claim your cash",
            "are we still meeting at 3 tonight? see you soon",
        ],
        8,
    )
    .unwrap();
    assert_eq!((p[0].label.as_str(), p[1].label.as_str()), ("spam", "ham"));

    // Stopped after 7 steps, then resumed: the same losses and the same results.
    let parts = dir.path().join("parts");
    let mut log1 = Log {
        stop_after: Some(7),
        ..Default::default()
    };
    let (ending, none) = finetune_classify(&parts, Some(cfg.clone()), &mut log1).unwrap();
    assert!(matches!(ending, Ending::Stopped { .. }) && none.is_none());
    assert!(finetune_classify(&parts, Some(cfg), &mut Log::default())
        .err()
        .unwrap()
        .to_string()
        .contains("--resume"));
    let mut log2 = Log::default();
    let (_, resumed) = finetune_classify(&parts, None, &mut log2).unwrap();
    let losses = |l: &[StepRecord]| l.iter().map(|r| r.train_loss).collect::<Vec<_>>();
    let mut joined = losses(&log1.steps);
    joined.extend(losses(&log2.steps));
    assert_eq!(joined, losses(&log.steps));
    let resumed = resumed.unwrap();
    assert_eq!(resumed.test_accuracy, results.test_accuracy);
    assert_eq!(resumed.test_loss, results.test_loss);
}

#[test]
fn a_lora_run_writes_an_adapter_that_loads_merged() {
    let dir = tempfile::tempdir().unwrap();
    let data = toy_data(dir.path());
    let mut cfg = toy_config(&data);
    cfg.tune.trainable = Trainable::Lora;
    cfg.tune.lora = Some(LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
    });
    cfg.optim.epochs = 1;
    cfg.tune.merge = true;
    let run = dir.path().join("lora");
    let mut log = Log::default();
    let (_, results) = finetune_classify(&run, Some(cfg), &mut log).unwrap();
    let results = results.unwrap();
    // rank 4 x (in + out) for 2 x 6 block layers and the 2-class head.
    let c = 32;
    let expected = 2 * 4 * (4 * (c + c) + 2 * (c + 4 * c)) + 4 * (c + 2);
    assert_eq!(results.trainable_params, expected);
    assert_eq!(log.info.unwrap().trainable_params, expected);
    // The adapter (with the random base saved beside it) and the merged model agree.
    let x = Tensor::new(&[[1u32, 500, 20_000, 7]], &Device::Cpu).unwrap();
    let adapter = scratchllm_model::modeldir::load(&run.join("adapter"), &Device::Cpu).unwrap();
    assert_eq!(adapter.layout, scratchllm_model::Layout::Adapter);
    let merged = scratchllm_model::modeldir::load(&run.join("model"), &Device::Cpu).unwrap();
    let a = Gpt::new(&adapter.config, &adapter.weights)
        .unwrap()
        .forward(&x, None)
        .unwrap();
    let m = Gpt::new(&merged.config, &merged.weights)
        .unwrap()
        .forward(&x, None)
        .unwrap();
    assert!(max_diff(&a, &m) < 1e-5);
    let raw =
        scratchllm_model::modeldir::load_adapter(&run.join("adapter"), None, &Device::Cpu).unwrap();
    let unmerged = Gpt::with_lora(&raw.config, &raw.weights, Some(&raw.lora))
        .unwrap()
        .forward(&x, None)
        .unwrap();
    assert!(max_diff(&unmerged, &m) < 1e-5);
    let stored =
        weights::read_safetensors(&run.join("adapter/adapter.safetensors"), &Device::Cpu).unwrap();
    assert!(stored
        .keys()
        .all(|n| lora::is_adapter(n) || n.starts_with("out_head.")));
}

#[test]
fn too_little_data_is_refused_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("few.tsv");
    std::fs::write(&data, "ham\thi\nspam\twin\nham\tok\n").unwrap();
    let cfg = toy_config(&data);
    let e = finetune_classify(
        &dir.path().join("r"),
        Some(cfg.clone()),
        &mut Log::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("2 training examples (of 3) for batches of 8 and 2 classes"),
        "{e}"
    );
    std::fs::write(&data, "ham\thi\nham\tyo\n").unwrap();
    let e = finetune_classify(&dir.path().join("r2"), Some(cfg), &mut Log::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("only one class (ham)"), "{e}");
}
