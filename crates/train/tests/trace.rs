//! The book's PyTorch training loops, step by step: from ../shared/fixtures/train-trace/init.safetensors
//! on the batches trace.json describes, our losses match to 1e-3 relative, learning rates to 1e-9,
//! gradient norms to 1e-3 relative, and the final validation loss to 1e-3 relative.
use candle_core::Device;
use scratchllm_model::{weights, GptConfig, Weights};
use scratchllm_testutil::{shared, shared_json, shared_text};
use scratchllm_tokenizer::{gpt2, SpecialMode};
use scratchllm_train::{
    split_text, AdamWConfig, Loader, Schedule, TrainSettings, Trainer, Windows,
};

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs()
}

struct Setup {
    cfg: GptConfig,
    init: Weights,
    train: Windows,
    val: Windows,
}

fn setup(trace: &serde_json::Value) -> Option<Setup> {
    let text = shared_text("data/the-verdict.txt")?;
    let init_path = shared("fixtures/train-trace/init.safetensors")?;
    let cfg: GptConfig = serde_json::from_value(trace["config"].clone()).unwrap();
    let init = Weights::new(
        weights::read_safetensors(&init_path, &Device::Cpu).unwrap(),
        "init.safetensors",
    );
    let tok = gpt2().unwrap();
    let (train_text, val_text) = split_text(&text, 0.9);
    let ctx = cfg.context_length;
    let windows = |t: &str| Windows::new(tok.encode(t, SpecialMode::Allow).unwrap(), ctx, ctx);
    Some(Setup {
        train: windows(train_text),
        val: windows(val_text),
        cfg,
        init,
    })
}

fn settings(epochs: usize, schedule: Schedule, grad_clip: Option<f32>) -> TrainSettings {
    TrainSettings {
        epochs,
        max_steps: None,
        loader: Loader {
            batch_size: 4,
            shuffle: false,
            drop_last: true,
            seed: 0,
        },
        adamw: AdamWConfig {
            lr: schedule.peak_lr,
            weight_decay: 0.1,
            ..Default::default()
        },
        schedule,
        grad_clip,
        clip_after_warmup: true,
        grad_accum: 1,
        no_decay_bias_norm: false,
    }
}

fn run(s: &Setup, settings: TrainSettings) -> (Vec<scratchllm_train::StepRecord>, f32) {
    let mut trainer = Trainer::new(&s.cfg, s.init.clone(), settings).unwrap();
    let mut records = Vec::new();
    trainer
        .run(&s.train, &mut |_, r| {
            records.push(r.clone());
            Ok(())
        })
        .unwrap();
    let val_loader = Loader {
        batch_size: 4,
        shuffle: false,
        drop_last: false,
        seed: 0,
    };
    let val = trainer.evaluate(&s.val, &val_loader, None).unwrap();
    (records, val)
}

#[test]
fn chapter5_loop_matches_pytorch() {
    let Some(trace) = shared_json("fixtures/train-trace/trace.json") else {
        return;
    };
    let Some(s) = setup(&trace) else { return };
    let t = &trace["chapter5"];
    let want = floats(&t["train_loss_per_step"]);
    let (records, val) = run(&s, settings(1, Schedule::constant(4e-4), None));
    assert_eq!(records.len(), want.len());
    let worst = records
        .iter()
        .zip(&want)
        .map(|(r, &w)| ((r.train_loss as f64 - w) / w).abs())
        .fold(0.0, f64::max);
    eprintln!("chapter 5: worst relative loss difference {worst:.2e}, val loss {val}");
    for (r, &w) in records.iter().zip(&want) {
        assert!(
            close(r.train_loss as f64, w, 1e-3),
            "step {}: loss {} vs PyTorch {w}",
            r.step,
            r.train_loss
        );
    }
    let want_val = t["val_loss_after"].as_f64().unwrap();
    assert!(
        close(val as f64, want_val, 1e-3),
        "val loss {val} vs {want_val}"
    );
}

#[test]
fn appendix_d_loop_matches_pytorch() {
    let Some(trace) = shared_json("fixtures/train-trace/trace.json") else {
        return;
    };
    let Some(s) = setup(&trace) else { return };
    let t = &trace["appendix_d"];
    let want = floats(&t["train_loss_per_step"]);
    let total = want.len();
    let warmup = t["warmup_steps"].as_u64().unwrap() as usize;
    let schedule = Schedule {
        peak_lr: 1e-3,
        warmup_steps: warmup,
        warmup_start_lr: 1e-5,
        min_lr: Some(1e-5),
        total_steps: total,
    };
    let (records, val) = run(&s, settings(2, schedule, Some(1.0)));
    assert_eq!(records.len(), total);
    let worst = records
        .iter()
        .zip(&want)
        .map(|(r, &w)| ((r.train_loss as f64 - w) / w).abs())
        .fold(0.0, f64::max);
    eprintln!("appendix D: worst relative loss difference {worst:.2e}, val loss {val}");
    for ((r, &w), (&lr, &norm)) in records.iter().zip(&want).zip(
        floats(&t["lr_per_step"])
            .iter()
            .zip(&floats(&t["grad_norm_before_clip_per_step"])),
    ) {
        assert!(
            (r.lr - lr).abs() <= 1e-9,
            "step {}: lr {} vs {lr}",
            r.step,
            r.lr
        );
        assert!(
            close(r.grad_norm as f64, norm, 1e-3),
            "step {}: grad norm {} vs {norm}",
            r.step,
            r.grad_norm
        );
        assert!(
            close(r.train_loss as f64, w, 1e-3),
            "step {}: loss {} vs PyTorch {w}",
            r.step,
            r.train_loss
        );
    }
    let want_val = t["val_loss_after"].as_f64().unwrap();
    assert!(
        close(val as f64, want_val, 1e-3),
        "val loss {val} vs {want_val}"
    );
}
