//! The whole model on the fused kernels against the same model on candle's plain ops: logits,
//! loss, every weight's gradient, and cached generation steps.
use candle_core::{Device, Tensor, Var};
use scratchllm_model::{kernels, DropoutRng, Gpt, GptConfig, Weights};
use std::collections::HashMap;

fn config() -> GptConfig {
    GptConfig {
        vocab_size: 500,
        context_length: 32,
        emb_dim: 48,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.1,
        qkv_bias: true,
        ..GptConfig::preset("gpt2-tiny").unwrap()
    }
}

/// Logits, loss and gradients (by weight name) with the kernels on or off.
fn run(
    fused: bool,
    vars: &HashMap<String, Var>,
    cfg: &GptConfig,
) -> (Tensor, f32, HashMap<String, Tensor>) {
    kernels::set_fused(fused);
    let tensors = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let model = Gpt::new(cfg, &Weights::new(tensors, "test")).unwrap();
    let ids: Vec<u32> = (0..2 * 20).map(|i| (i * 37 + 11) % 500).collect();
    let x = Tensor::from_vec(ids, (2, 20), &Device::Cpu).unwrap();
    let logits = model.forward(&x, Some(&DropoutRng::new(7))).unwrap();
    let targets: Vec<i64> = (0..40)
        .map(|i| if i % 7 == 3 { -100 } else { (i * 13 + 5) % 500 })
        .collect();
    let loss = kernels::cross_entropy(&logits.flatten_to(1).unwrap(), &targets, -100).unwrap();
    let grads = loss.backward().unwrap();
    let by_name = vars
        .iter()
        .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone()))
        .collect();
    kernels::set_fused(true);
    (logits, loss.to_scalar().unwrap(), by_name)
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
fn fused_and_plain_models_agree_on_logits_loss_and_every_gradient() {
    let cfg = config();
    let weights = Weights::random(&cfg, 5, &Device::Cpu).unwrap();
    let vars: HashMap<String, Var> = weights
        .tensors()
        .iter()
        .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let (lf, loss_f, gf) = run(true, &vars, &cfg);
    let (lp, loss_p, gp) = run(false, &vars, &cfg);
    assert!(
        max_diff(&lf, &lp) < 1e-4,
        "logits differ by {}",
        max_diff(&lf, &lp)
    );
    assert!((loss_f - loss_p).abs() < 1e-5, "loss {loss_f} vs {loss_p}");
    assert_eq!(gf.len(), gp.len());
    for (name, g) in &gf {
        let scale = gp[name]
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .flatten_all()
            .unwrap();
        let scale = scale.max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3);
        let d = max_diff(g, &gp[name]);
        assert!(
            d < 1e-4 * scale.max(1.0),
            "gradient of {name} differs by {d} (scale {scale})"
        );
    }
}

#[test]
fn fused_and_plain_cached_generation_agree() {
    let cfg = config();
    let weights = Weights::random(&cfg, 9, &Device::Cpu).unwrap();
    let model = Gpt::new(&cfg, &weights).unwrap();
    let prompt = Tensor::new(&[[3u32, 99, 250, 7]], &Device::Cpu).unwrap();
    let step = Tensor::new(&[[42u32]], &Device::Cpu).unwrap();
    let mut outs = Vec::new();
    for fused in [true, false] {
        kernels::set_fused(fused);
        let mut cache = model.new_cache();
        let a = model.forward_cached(&prompt, &mut cache).unwrap();
        let b = model.forward_cached(&step, &mut cache).unwrap();
        outs.push((a, b));
    }
    kernels::set_fused(true);
    assert!(max_diff(&outs[0].0, &outs[1].0) < 1e-4);
    assert!(max_diff(&outs[0].1, &outs[1].1) < 1e-4);
}

#[test]
fn bf16_weights_compute_as_the_rounded_weights_in_f32() {
    use candle_core::DType;
    let cfg = GptConfig {
        tie_embeddings: true,
        ..config()
    };
    let weights = Weights::random(&cfg, 11, &Device::Cpu).unwrap();
    let narrow = weights.converted(true).unwrap();
    assert_eq!(
        narrow.tensors()["trf_blocks.0.ff.layers.0.weight"].dtype(),
        DType::BF16
    );
    assert_eq!(
        narrow.tensors()["trf_blocks.0.norm1.scale"].dtype(),
        DType::F32
    );
    let rounded = narrow.clone().converted(false).unwrap();
    let a = Gpt::new(&cfg, &narrow).unwrap();
    let b = Gpt::new(&cfg, &rounded).unwrap();
    let prompt = Tensor::new(&[[3u32, 99, 250, 7, 1, 2, 3, 4, 5, 6]], &Device::Cpu).unwrap();
    let step = Tensor::new(&[[42u32]], &Device::Cpu).unwrap();
    let (mut ca, mut cb) = (a.new_cache(), b.new_cache());
    for x in [&prompt, &step] {
        let la = a.forward_cached(x, &mut ca).unwrap();
        let lb = b.forward_cached(x, &mut cb).unwrap();
        assert_eq!(la.dtype(), DType::F32);
        assert!(max_diff(&la, &lb) < 1e-4, "{}", max_diff(&la, &lb));
    }
}
