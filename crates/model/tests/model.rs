//! Model behaviour that needs no fixture: gradients, caching, sampling, round trips, bad files.
use candle_core::{Device, Tensor, Var};
use scratchllm_model::generate::{pick, GenerateOptions};
use scratchllm_model::{generate, modeldir, weights, DropoutRng, Gpt, GptConfig, Weights};
use std::collections::HashMap;

fn tiny(ctx: usize, qkv_bias: bool, tie: bool) -> GptConfig {
    GptConfig {
        vocab_size: 97,
        context_length: ctx,
        emb_dim: 32,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.1,
        qkv_bias,
        tie_embeddings: tie,
        num_classes: None,
        ..Default::default()
    }
}

fn logits(model: &Gpt, ids: &[u32]) -> Tensor {
    model
        .forward(
            &Tensor::new(ids, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
        )
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn every_trainable_tensor_receives_a_gradient() {
    for (qkv_bias, tie) in [(false, false), (true, true)] {
        let cfg = tiny(16, qkv_bias, tie);
        let w = Weights::random(&cfg, 1, &Device::Cpu).unwrap();
        let vars: HashMap<String, Var> = w
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap()))
            .collect();
        let model = Gpt::new(
            &cfg,
            &Weights::new(
                vars.iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                    .collect(),
                "vars",
            ),
        )
        .unwrap();
        let x = Tensor::new(
            &[[1u32, 5, 9, 13, 2, 7], [3, 3, 8, 40, 96, 0]],
            &Device::Cpu,
        )
        .unwrap();
        let y = Tensor::new(&[5u32, 9, 13, 2, 7, 1, 3, 8, 40, 96, 0, 4], &Device::Cpu).unwrap();
        let logits = model
            .forward(&x, Some(&DropoutRng::new(1)))
            .unwrap()
            .flatten_to(1)
            .unwrap(); // (B*T, V)
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
        assert_eq!(vars.len(), if tie { 4 + 2 * 16 } else { 5 + 2 * 13 });
    }
}

#[test]
fn dropout_only_in_training_mode() {
    let cfg = tiny(16, true, true);
    let model = Gpt::new(&cfg, &Weights::random(&cfg, 2, &Device::Cpu).unwrap()).unwrap();
    let x = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let eval = |m: &Gpt| m.forward(&x, None).unwrap();
    assert_eq!(max_diff(&eval(&model), &eval(&model)), 0.0);
    let train = |seed| model.forward(&x, Some(&DropoutRng::new(seed))).unwrap();
    assert!(max_diff(&train(1), &eval(&model)) > 0.0);
    // Masks depend only on the seed, so a resumed run draws the same ones.
    assert_eq!(max_diff(&train(1), &train(1)), 0.0);
    assert!(max_diff(&train(1), &train(2)) > 0.0);
}

#[test]
fn cache_gives_the_uncached_ids_across_the_context_limit() {
    let cfg = tiny(8, true, true);
    let model = Gpt::new(&cfg, &Weights::random(&cfg, 3, &Device::Cpu).unwrap()).unwrap();
    // 5 prompt tokens + 12 new ones: the window slides 9 times past the context of 8.
    for temperature in [None, Some(0.8)] {
        let opts = |use_cache| GenerateOptions {
            max_new_tokens: 12,
            temperature,
            top_k: temperature.map(|_| 20),
            seed: 9,
            use_cache,
            ..Default::default()
        };
        let with = generate(&model, &[1, 2, 3, 4, 5], &opts(true), &mut |_| Ok(true)).unwrap();
        let without = generate(&model, &[1, 2, 3, 4, 5], &opts(false), &mut |_| Ok(true)).unwrap();
        assert_eq!(with.len(), 12);
        assert_eq!(with, without, "temperature {temperature:?}");
    }
    // A prompt longer than the context keeps its last tokens.
    let long: Vec<u32> = (0..20).collect();
    let a = generate(
        &model,
        &long,
        &GenerateOptions {
            max_new_tokens: 3,
            ..Default::default()
        },
        &mut |_| Ok(true),
    )
    .unwrap();
    let b = generate(
        &model,
        &long[12..],
        &GenerateOptions {
            max_new_tokens: 3,
            ..Default::default()
        },
        &mut |_| Ok(true),
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn sampling_rules() {
    let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    assert_eq!(
        pick(&logits, &GenerateOptions::default(), &mut rng).unwrap(),
        1,
        "argmax takes the first maximum"
    );
    let top2 = GenerateOptions {
        temperature: Some(1.0),
        top_k: Some(2),
        ..Default::default()
    };
    let top_p = GenerateOptions {
        temperature: Some(1.0),
        top_p: Some(0.5),
        ..Default::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        seen.insert(pick(&logits, &top2, &mut rng).unwrap());
        // p = 0.5: the first of the two tied best tokens (0.39 each) is not enough, so both stay.
        assert!([1, 3].contains(&pick(&logits, &top_p, &mut rng).unwrap()));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 3]);
    let cfg = tiny(16, true, true);
    let model = Gpt::new(&cfg, &Weights::random(&cfg, 4, &Device::Cpu).unwrap()).unwrap();
    let sample = |seed| {
        generate(
            &model,
            &[1, 2],
            &GenerateOptions {
                max_new_tokens: 10,
                temperature: Some(1.5),
                seed,
                ..Default::default()
            },
            &mut |_| Ok(true),
        )
        .unwrap()
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));
    let stop = generate(
        &model,
        &[1, 2],
        &GenerateOptions {
            max_new_tokens: 10,
            stop_id: Some(sample(7)[0]),
            temperature: Some(1.5),
            seed: 7,
            ..Default::default()
        },
        &mut |_| Ok(true),
    )
    .unwrap();
    assert_eq!(stop.len(), 1);
}

#[test]
fn bad_generation_settings_are_refused() {
    let bad = [
        GenerateOptions {
            temperature: Some(0.0),
            ..Default::default()
        },
        GenerateOptions {
            temperature: Some(-1.0),
            ..Default::default()
        },
        GenerateOptions {
            temperature: Some(1.0),
            top_p: Some(1.5),
            ..Default::default()
        },
        GenerateOptions {
            temperature: Some(1.0),
            top_p: Some(0.0),
            ..Default::default()
        },
        GenerateOptions {
            temperature: Some(1.0),
            top_k: Some(0),
            ..Default::default()
        },
        GenerateOptions {
            top_k: Some(5),
            ..Default::default()
        },
    ];
    for o in bad {
        assert!(o.validate().is_err(), "{o:?}");
    }
    let cfg = tiny(16, true, true);
    let model = Gpt::new(&cfg, &Weights::random(&cfg, 4, &Device::Cpu).unwrap()).unwrap();
    let e = generate(&model, &[1, 500], &GenerateOptions::default(), &mut |_| {
        Ok(true)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("500") && e.contains("97"), "{e}");
    assert!(generate(&model, &[], &GenerateOptions::default(), &mut |_| Ok(true)).is_err());
}

#[test]
fn save_and_export_round_trip_with_the_same_logits() {
    for (qkv_bias, tie) in [(true, true), (false, false)] {
        let cfg = tiny(16, qkv_bias, tie);
        let w = Weights::random(&cfg, 5, &Device::Cpu).unwrap();
        let model = Gpt::new(&cfg, &w).unwrap();
        let want = logits(&model, &[3, 1, 4, 1, 5, 9]);
        let tok = scratchllm_tokenizer::gpt2().unwrap();
        let dir = tempfile::tempdir().unwrap();
        modeldir::save(&dir.path().join("ours"), &cfg, w.tensors(), &tok).unwrap();
        modeldir::export_hf(&dir.path().join("hf"), &cfg, w.tensors(), &tok).unwrap();
        // Hugging Face files saved from `GPT2Model` lack the `transformer.` prefix.
        let hf = dir.path().join("hf");
        let bare = dir.path().join("hf-bare");
        std::fs::create_dir_all(&bare).unwrap();
        for f in ["config.json", "vocab.json", "merges.txt"] {
            std::fs::copy(hf.join(f), bare.join(f)).unwrap();
        }
        let st = weights::read_safetensors(&hf.join("model.safetensors"), &Device::Cpu).unwrap();
        let stripped = st
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("transformer.").to_string(), v))
            .collect();
        weights::write_safetensors(&stripped, &bare.join("model.safetensors")).unwrap();
        for sub in ["ours", "hf", "hf-bare"] {
            let files = modeldir::load(&dir.path().join(sub), &Device::Cpu).unwrap();
            assert_eq!(files.config.tie_embeddings, tie, "{sub}");
            let again = Gpt::new(&files.config, &files.weights).unwrap();
            assert!(
                max_diff(&logits(&again, &[3, 1, 4, 1, 5, 9]), &want) < 1e-6,
                "{sub}"
            );
            assert_eq!(files.tokenizer.vocab_size(), 50257);
        }
    }
}

#[test]
fn hostile_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny(16, true, true);
    let w = Weights::random(&cfg, 6, &Device::Cpu).unwrap();
    let tok = scratchllm_tokenizer::gpt2().unwrap();
    let ours = dir.path().join("ours");
    modeldir::save(&ours, &cfg, w.tensors(), &tok).unwrap();
    let st = ours.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    // Truncated file.
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = modeldir::load(&ours, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // A header claiming an absurd size.
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&st, &lying).unwrap();
    assert!(modeldir::load(&ours, &Device::Cpu).is_err());
    // A tensor of the wrong shape names itself and both shapes.
    let mut t = w.tensors().clone();
    t.insert(
        "trf_blocks.1.ff.layers.0.weight".into(),
        Tensor::zeros((10, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    weights::write_safetensors(&t, &st).unwrap();
    let files = modeldir::load(&ours, &Device::Cpu).unwrap();
    let e = Gpt::new(&files.config, &files.weights)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trf_blocks.1.ff.layers.0.weight")
            && e.contains("[128, 32]")
            && e.contains("[10, 32]"),
        "{e}"
    );
    // A missing tensor.
    t.remove("trf_blocks.1.ff.layers.0.weight");
    weights::write_safetensors(&t, &st).unwrap();
    let files = modeldir::load(&ours, &Device::Cpu).unwrap();
    assert!(Gpt::new(&files.config, &files.weights)
        .unwrap_err()
        .to_string()
        .contains("trf_blocks.1.ff.layers.0.weight is missing"));
    // A directory with nothing recognisable lists what it has.
    let e = modeldir::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no model found") && e.contains("ours"), "{e}");
}
