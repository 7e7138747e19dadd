//! DPO: the loss and rewards against hand-computed values (and their gradient), the sequence
//! log-probabilities against a hand computation, and a tiny run whose reward margin rises.
use candle_core::{Device, Tensor, Var, D};
use scratchllm_model::{modeldir, GptConfig, Weights};
use scratchllm_train::dpo::{dpo_loss, finetune_dpo, sequence_logprobs, DpoConfig};
use scratchllm_train::{Ending, EvalRecord, Observer, StepRecord};
use std::path::Path;

fn t(v: &[f32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

#[test]
fn the_loss_and_rewards_equal_the_formula() {
    let (pc, pr, rc, rr) = (
        [-1.2f32, -0.5],
        [-2.0f32, -0.7],
        [-1.5f32, -0.6],
        [-1.7f32, -0.9],
    );
    let beta = 0.1;
    let (loss, chosen, rejected) = dpo_loss(&t(&pc), &t(&pr), &t(&rc), &t(&rr), beta).unwrap();
    // By hand: logits 0.6 and -0.1; -log sigmoid(z) = log(1 + exp(-z)).
    let want = ((1.0 + (-0.06f64).exp()).ln() + (1.0 + (0.01f64).exp()).ln()) / 2.0;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    assert!((want - 0.680_878_4).abs() < 1e-6);
    assert!((chosen - 0.2).abs() < 1e-6 && (rejected + 0.05).abs() < 1e-6);
    // Equal policy and reference: log 2 and zero rewards.
    let (loss, c, r) = dpo_loss(&t(&pc), &t(&pr), &t(&pc), &t(&pr), beta).unwrap();
    assert!((loss.to_scalar::<f32>().unwrap() - std::f32::consts::LN_2).abs() < 1e-6);
    assert_eq!((c, r), (0.0, 0.0));
    // Far from zero it stays finite: -log sigmoid(-100) = 100, -log sigmoid(100) ~ 0.
    let (loss, _, _) = dpo_loss(&t(&[0.0]), &t(&[1000.0]), &t(&[0.0]), &t(&[0.0]), 0.1).unwrap();
    assert!((loss.to_scalar::<f32>().unwrap() - 100.0).abs() < 1e-3);
    let (loss, _, _) = dpo_loss(&t(&[1000.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), 0.1).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-6);
}

#[test]
fn the_gradient_is_the_formulas() {
    // d/d pc of mean_i -log sigmoid(beta z_i) = -beta * sigmoid(-beta z_i) / B.
    let pc = Var::new(&[-1.2f32, -0.5], &Device::Cpu).unwrap();
    let (loss, _, _) = dpo_loss(
        pc.as_tensor(),
        &t(&[-2.0, -0.7]),
        &t(&[-1.5, -0.6]),
        &t(&[-1.7, -0.9]),
        0.1,
    )
    .unwrap();
    let g: Vec<f32> = loss
        .backward()
        .unwrap()
        .get(pc.as_tensor())
        .unwrap()
        .to_vec1()
        .unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for (gi, z) in g.iter().zip([0.6f64, -0.1]) {
        let want = -0.1 * sig(-0.1 * z) / 2.0;
        assert!((*gi as f64 - want).abs() < 1e-6, "{gi} vs {want}");
    }
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

#[test]
fn sequence_logprobs_average_the_response_tokens() {
    let cfg = tiny(16);
    let w = Weights::random(&cfg, 3, &Device::Cpu).unwrap();
    let gpt = scratchllm_model::Gpt::new(&cfg, &w).unwrap();
    let ids = Tensor::new(&[[11u32, 400, 9000, 7, 50256]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0f32, 0.0, 1.0, 1.0, 0.0]], &Device::Cpu).unwrap();
    let got: Vec<f32> = sequence_logprobs(&gpt, &ids, &mask, None)
        .unwrap()
        .to_vec1()
        .unwrap();
    // By hand: token t is scored by position t - 1's log-softmax; tokens 2 and 3 are selected.
    let logp = candle_nn::ops::log_softmax(&gpt.forward(&ids, None).unwrap(), D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want = (logp[1][9000] + logp[2][7]) / 2.0;
    assert!((got[0] - want).abs() < 1e-5, "{got:?} vs {want}");
}

#[derive(Default)]
struct Log {
    evals: Vec<EvalRecord>,
    margins: Vec<String>,
}

impl Observer for Log {
    fn start(&mut self, _: usize, _: usize, _: usize, _: usize) {}
    fn step(&mut self, _: &StepRecord) {}
    fn eval(&mut self, r: &EvalRecord) {
        self.evals.push(r.clone());
    }
    fn sample(&mut self, _: usize, text: &str) {
        self.margins.push(text.to_string());
    }
    fn checkpoint(&mut self, _: &Path) {}
    fn stop_requested(&self) -> bool {
        false
    }
}

#[test]
fn a_tiny_policy_learns_to_prefer_the_chosen_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(48);
    let w = Weights::random(&cfg, 5, &Device::Cpu).unwrap();
    let base = dir.path().join("base");
    modeldir::save(
        &base,
        &cfg,
        w.tensors(),
        &scratchllm_tokenizer::gpt2().unwrap(),
    )
    .unwrap();
    let entries: Vec<serde_json::Value> = (0..24)
        .map(|i| {
            let word = ["red", "blue", "green"][i % 3];
            serde_json::json!({"instruction": "Name a color politely.", "input": word, "output": "x",
                               "chosen": format!("Gladly: {word}."), "rejected": format!("Ugh, {word}, whatever.")})
        })
        .collect();
    let data = dir.path().join("prefs.json");
    std::fs::write(&data, serde_json::to_string(&entries).unwrap()).unwrap();
    let mut dc = DpoConfig::book(base.to_str().unwrap(), &data);
    dc.optim.batch_size = 4;
    dc.optim.lr = 1e-3;
    dc.optim.epochs = 2;
    dc.run.eval_every = 2;
    dc.run.eval_batches = None;
    let mut log = Log::default();
    let run = dir.path().join("run");
    let (ending, results) = finetune_dpo(&run, Some(dc), &mut log).unwrap();
    assert!(matches!(ending, Ending::Finished { .. }));
    let r = results.unwrap();
    assert_eq!((r.train_pairs, r.test_pairs, r.val_pairs), (20, 2, 2));
    let first = &log.evals[0];
    assert!(
        (first.train_loss - std::f32::consts::LN_2).abs() < 0.02,
        "{first:?}"
    );
    assert!(r.train.loss < first.train_loss - 0.05, "{r:?}");
    assert!(r.train.margin() > 0.5, "{r:?}");
    assert!(r.val.margin() > 0.0, "{r:?}");
    assert!(run.join("margin.svg").is_file() && run.join("model/config.json").is_file());
}
