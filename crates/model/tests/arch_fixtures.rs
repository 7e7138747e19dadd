//! Llama 3, Qwen3 and Gemma 3 (../shared/fixtures/arch/*-tiny, Hugging Face directories made by
//! transformers): our tokenization of the prompts equals theirs, the logits equal transformers' to
//! 1e-4 (max abs), and the 24 greedy ids are transformers' with and without the KV cache (the
//! Gemma prompts run past its sliding window of 8). The directories written back by `export_hf`
//! and by our own layout load with the same logits.
use candle_core::{Device, IndexOp, Tensor};
use scratchllm_model::{generate, modeldir, GenerateOptions, Gpt, ModelFiles};
use scratchllm_testutil::{json_ids as ids, shared, shared_json};
use std::path::Path;

const FIXTURES: [&str; 3] = ["llama3-tiny", "qwen3-tiny", "gemma3-tiny"];

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Checks `files` against fixture `name`'s logits (and, with `greedy`, its greedy ids).
fn check(name: &str, files: &ModelFiles, greedy: bool) {
    let dev = Device::Cpu;
    let expected = shared_json(&format!("fixtures/arch/{name}/expected.json")).unwrap();
    let logits = shared(&format!("fixtures/arch/{name}/expected-logits.safetensors")).unwrap();
    let want_logits = candle_core::safetensors::load(logits, &dev).unwrap();
    let model = Gpt::new(&files.config, &files.weights).unwrap();
    for (i, p) in expected["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&p["ids"]);
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            files.tokenizer.encode_ordinary(text),
            prompt,
            "{name} prompt {i} ids"
        );
        let x = Tensor::new(prompt.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got = model.forward(&x, None).unwrap().i(0).unwrap(); // (T, V)
        let diff = max_diff(&got, &want_logits[&format!("prompt{i}")]);
        assert!(
            diff < 1e-4,
            "{name} prompt {i}: max abs logit difference {diff}"
        );
        if !greedy {
            continue;
        }
        let want = ids(&p["greedy_new_ids"]);
        for use_cache in [true, false] {
            let opts = GenerateOptions {
                max_new_tokens: want.len(),
                stop_id: None,
                use_cache,
                ..Default::default()
            };
            let out = generate(&model, &prompt, &opts, &mut |_| Ok(true)).unwrap();
            assert_eq!(out, want, "{name} prompt {i} greedy, cache {use_cache}");
        }
    }
}

#[test]
fn hugging_face_directories_give_transformers_logits_and_greedy_ids() {
    for name in FIXTURES {
        let Some(dir) = shared(&format!("fixtures/arch/{name}")) else {
            return;
        };
        let files = modeldir::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(files.layout, modeldir::Layout::HuggingFace, "{name}");
        check(name, &files, true);
    }
}

#[test]
fn our_layout_and_exported_hugging_face_directories_load_the_same_model() {
    for name in FIXTURES {
        let Some(dir) = shared(&format!("fixtures/arch/{name}")) else {
            return;
        };
        let files = modeldir::load(&dir, &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("ours");
        modeldir::save(
            &ours,
            &files.config,
            files.weights.tensors(),
            &files.tokenizer,
        )
        .unwrap();
        let back = modeldir::load(&ours, &Device::Cpu).unwrap();
        assert_eq!(back.layout, modeldir::Layout::Scratchllm);
        assert_eq!(back.config, files.config, "{name}");
        check(name, &back, false);
        let hf = tmp.path().join("hf");
        modeldir::export_hf(
            &hf,
            &files.config,
            files.weights.tensors(),
            &files.tokenizer,
        )
        .unwrap();
        let again = modeldir::load(&hf, &Device::Cpu).unwrap();
        assert_eq!(again.config, files.config, "{name}");
        check(name, &again, false);
    }
}

/// Copies fixture `name` into a temporary directory with its weights stored as bf16 and split into
/// two shards listed by `model.safetensors.index.json`.
fn sharded_bf16_copy(dir: &Path, out: &Path) {
    let tensors =
        scratchllm_model::weights::read_safetensors(&dir.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| {
                (
                    (*n).clone(),
                    tensors[*n].to_dtype(candle_core::DType::BF16).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&shard, out.join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(dir.join(f), out.join(f)).unwrap();
    }
}

#[test]
fn sharded_bf16_directories_stay_bf16_until_asked_for_f32() {
    for name in FIXTURES {
        let Some(dir) = shared(&format!("fixtures/arch/{name}")) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        sharded_bf16_copy(&dir, tmp.path());
        let stored = modeldir::load_stored(tmp.path(), &Device::Cpu).unwrap();
        assert!(
            stored.weights.stores_bf16(),
            "{name}: the matrices stay bf16 on load"
        );
        assert!(stored
            .weights
            .tensors()
            .values()
            .all(|t| t.dtype() == candle_core::DType::BF16));
        // f32 computation from the bf16 weights equals the rounded weights' f32 model.
        let f32_files = modeldir::load(tmp.path(), &Device::Cpu).unwrap();
        let rounded = Gpt::new(&f32_files.config, &f32_files.weights).unwrap();
        let mixed = Gpt::new(
            &stored.config,
            &stored.weights.clone().converted(true).unwrap(),
        )
        .unwrap();
        let x = Tensor::new(&[[37u32, 356, 89, 310, 676, 294]], &Device::Cpu).unwrap();
        let a = rounded.forward(&x, None).unwrap();
        let b = mixed.forward(&x, None).unwrap();
        let diff = max_diff(&a, &b);
        assert!(
            diff < 1e-3,
            "{name}: bf16 matrices against their f32 widening: {diff}"
        );
    }
}

#[test]
fn broken_directories_name_the_file_and_the_field() {
    let Some(dir) = shared("fixtures/arch/qwen3-tiny") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    sharded_bf16_copy(&dir, tmp.path());
    // A shard missing from the directory.
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = modeldir::load(tmp.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
    // An unknown model_type.
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "mamba".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = modeldir::load(tmp.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mamba") && e.contains("config.json"), "{e}");
    // A missing field.
    cfg["model_type"] = "qwen3".into();
    cfg.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = modeldir::load(tmp.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("num_attention_heads is missing"), "{e}");
    // A tensor of the wrong shape: more heads than the weights hold.
    let tmp2 = tempfile::tempdir().unwrap();
    sharded_bf16_copy(&dir, tmp2.path());
    let cfg_path = tmp2.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_key_value_heads"] = 4.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let files = modeldir::load(tmp2.path(), &Device::Cpu).unwrap();
    let e = Gpt::new(&files.config, &files.weights)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("W_key.weight") && e.contains("[128, 64]"), "{e}");
}

#[test]
fn gemma_sliding_layers_keep_only_their_window_with_the_same_logits() {
    let Some(dir) = shared("fixtures/arch/gemma3-tiny") else {
        return;
    };
    let dev = Device::Cpu;
    let files = modeldir::load(&dir, &dev).unwrap();
    let cfg = &files.config;
    let window = cfg.sliding_window.unwrap();
    let sliding: Vec<usize> = (0..cfg.n_layers)
        .filter(|&i| cfg.window(i).is_some())
        .collect();
    assert!(!sliding.is_empty() && window == 8);
    let model = Gpt::new(cfg, &files.weights).unwrap();
    // 100 positions, one at a time after a 5-token prompt, against full forwards of the prefix.
    let ids: Vec<u32> = (0..100u32).map(|i| (i * 37 + 11) % 1024).collect();
    let mut cache = model.new_cache();
    let prompt = Tensor::new(&ids[..5], &dev).unwrap().unsqueeze(0).unwrap();
    model.forward_cached(&prompt, &mut cache).unwrap();
    for p in 5..ids.len() {
        let x = Tensor::new(&ids[p..p + 1], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got = model
            .forward_cached(&x, &mut cache)
            .unwrap()
            .i((0, 0))
            .unwrap();
        for &l in &sliding {
            assert!(
                cache.held(l) <= 2 * window,
                "layer {l} holds {} positions",
                cache.held(l)
            );
        }
        if p % 19 == 0 || p == ids.len() - 1 {
            let full = Tensor::new(&ids[..=p], &dev).unwrap().unsqueeze(0).unwrap();
            let want = model.forward(&full, None).unwrap().i((0, p)).unwrap();
            let diff = max_diff(&got, &want);
            assert!(
                diff < 1e-4,
                "position {p}: cached and full logits differ by {diff}"
            );
        }
    }
    // The global layer keeps everything.
    let global = (0..cfg.n_layers)
        .find(|&i| cfg.window(i).is_none())
        .unwrap();
    assert_eq!(cache.held(global), ids.len());
}

#[test]
fn a_book_file_of_an_unknown_width_takes_the_given_configuration() {
    // 48 wide: no GPT-2 size, so the number of heads cannot be read off the shapes.
    let cfg = scratchllm_model::GptConfig {
        vocab_size: 50,
        context_length: 16,
        emb_dim: 48,
        n_heads: 3,
        n_layers: 1,
        ..Default::default()
    };
    let w = scratchllm_model::Weights::random(&cfg, 1, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.safetensors");
    scratchllm_model::weights::write_safetensors(w.tensors(), &file).unwrap();
    let e = modeldir::load(&file, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("emb_dim 48") && e.contains("--model-config"),
        "{e}"
    );
    let files = modeldir::load_with(&file, Some(&cfg), &Device::Cpu).unwrap();
    assert_eq!(files.config, cfg);
    Gpt::new(&files.config, &files.weights).unwrap();
    // A configuration that does not fit the weights is named when the model is built.
    let wrong = scratchllm_model::GptConfig { n_layers: 2, ..cfg };
    let files = modeldir::load_with(&file, Some(&wrong), &Device::Cpu).unwrap();
    let e = Gpt::new(&files.config, &files.weights)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("trf_blocks.1"), "{e}");
}

#[test]
fn bf16_autocast_forward_stays_close_to_f32_for_every_fixture() {
    for name in FIXTURES {
        let Some(dir) = shared(&format!("fixtures/arch/{name}")) else {
            return;
        };
        let files = modeldir::load(&dir, &Device::Cpu).unwrap();
        let model = Gpt::new(&files.config, &files.weights).unwrap();
        let x = Tensor::new(&[[37u32, 356, 89, 310, 676, 294, 84, 428]], &Device::Cpu).unwrap();
        let exact = model.forward(&x, None).unwrap();
        let rng = scratchllm_model::DropoutRng::new(1);
        let _bf16 = scratchllm_model::kernels::Autocast::bf16(true);
        let mixed = model.forward(&x, Some(&rng)).unwrap();
        assert_eq!(mixed.dtype(), candle_core::DType::F32, "{name}");
        let diff = max_diff(&exact, &mixed);
        assert!(
            diff < 0.1,
            "{name}: bf16 products moved the logits by {diff}"
        );
    }
}

#[test]
fn decoder_presets_start_in_f32_at_the_uniform_loss() {
    for preset in ["llama3-tiny", "qwen3-tiny", "gemma3-tiny"] {
        let cfg = scratchllm_model::GptConfig::preset(preset).unwrap();
        let w = scratchllm_model::Weights::random(&cfg, 3, &Device::Cpu).unwrap();
        let bad = w
            .tensors()
            .iter()
            .find(|(_, t)| t.dtype() != candle_core::DType::F32);
        assert!(
            bad.is_none(),
            "{preset}: {:?} is not f32",
            bad.map(|(n, t)| (n, t.dtype()))
        );
        let model = Gpt::new(&cfg, &w).unwrap();
        let x = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
        let logits = model.forward(&x, None).unwrap();
        let lse = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
        let loss = -lse.i((0, 0, 5)).unwrap().to_scalar::<f32>().unwrap();
        let uniform = (cfg.vocab_size as f32).ln();
        assert!(
            (loss - uniform).abs() < 1.0,
            "{preset}: first loss {loss}, ln V {uniform}"
        );
    }
}
