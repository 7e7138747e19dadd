//! Activation checkpointing ([`scratchllm_model::recompute`]): a training step's loss and every
//! weight's gradient are the same with the blocks recomputed in the backward as with their
//! activations kept, for GPT-2 with dropout, grouped-query attention (Qwen3), sliding windows
//! (Gemma 3), bf16 autocast, and a model whose first blocks are frozen.
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use scratchllm_model::kernels::Autocast;
use scratchllm_model::recompute::{merge_grads, Checkpointing};
use scratchllm_model::{DropoutRng, Gpt, GptConfig, Weights};
use std::collections::HashMap;

/// The preset with random weights, those whose name passes `trained` as variables.
fn model(
    preset: &str,
    drop_rate: f32,
    trained: impl Fn(&str) -> bool,
) -> (Gpt, Vec<(String, Var)>) {
    let mut cfg = GptConfig::preset(preset).unwrap();
    cfg.drop_rate = drop_rate;
    let w = Weights::random(&cfg, 11, &Device::Cpu).unwrap();
    let (mut tensors, mut vars) = (HashMap::new(), Vec::new());
    for (name, t) in w.into_tensors() {
        if trained(&name) {
            let v = Var::from_tensor(&t).unwrap();
            tensors.insert(name.clone(), v.as_tensor().clone());
            vars.push((name, v));
        } else {
            tensors.insert(name, t);
        }
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (
        Gpt::new(&cfg, &Weights::new(tensors, "test")).unwrap(),
        vars,
    )
}

/// Loss and gradients of one step on a fixed batch, the blocks checkpointed or not.
fn step(model: &Gpt, checkpoint: bool) -> (f32, GradStore) {
    let ids: Vec<u32> = (0..2 * 24).map(|i| (i * 7919 % 250) as u32).collect();
    let x = Tensor::from_vec(ids.clone(), (2, 24), &Device::Cpu).unwrap();
    let y: Vec<u32> = ids.iter().map(|&i| (i + 1) % 250).collect();
    let y = Tensor::from_vec(y, 48, &Device::Cpu).unwrap();
    let _on = Checkpointing::blocks(checkpoint);
    let rng = DropoutRng::new(5);
    let logits = model
        .forward(&x, Some(&rng))
        .unwrap()
        .flatten_to(1)
        .unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let mut grads = loss.backward().unwrap();
    let recomputed = merge_grads(&mut grads).unwrap();
    assert_eq!(
        recomputed > 0,
        checkpoint,
        "weights given gradients by recomputed blocks"
    );
    (loss.to_scalar().unwrap(), grads)
}

fn same_step(preset: &str, drop_rate: f32, bf16: bool, trained: impl Fn(&str) -> bool) {
    let _autocast = Autocast::bf16(bf16);
    let (model, vars) = model(preset, drop_rate, trained);
    let (plain_loss, plain) = step(&model, false);
    let (loss, grads) = step(&model, true);
    assert_eq!(loss, plain_loss, "{preset}: loss");
    for (name, v) in &vars {
        let (a, b) = (grads.get(v.as_tensor()), plain.get(v.as_tensor()));
        let (a, b) = (
            a.unwrap_or_else(|| panic!("{preset}: no gradient for {name}")),
            b.unwrap(),
        );
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            a.iter().any(|&g| g != 0.0),
            "{preset}: {name} has a zero gradient"
        );
        assert_eq!(a, b, "{preset}: gradient of {name}");
    }
}

#[test]
fn checkpointed_blocks_give_the_same_gradients_gpt2_with_dropout() {
    same_step("gpt2-tiny", 0.1, false, |_| true);
    same_step("gpt2-tiny", 0.1, true, |_| true);
}

#[test]
fn checkpointed_blocks_give_the_same_gradients_decoders() {
    same_step("qwen3-tiny", 0.0, false, |_| true);
    same_step("gemma3-tiny", 0.1, false, |_| true);
    same_step("llama3-tiny", 0.0, true, |_| true);
}

#[test]
fn checkpointed_blocks_after_frozen_embeddings_train_the_rest() {
    // Frozen embeddings: the first block's input carries no gradient, so it runs plainly and the
    // second is recomputed.
    same_step("gpt2-tiny", 0.1, false, |n| !n.contains("_emb"));
}
