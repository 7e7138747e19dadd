//! What a broken model, an absurd setting or a strange path does (issue 19): a typed error that
//! names the model, the layer or the file, never a panic or a silent NaN.
use candle_core::{DType, Device, Tensor};
use scratchllm_model::classifier::{predict, ClassifierSpec, TokenPosition};
use scratchllm_model::generate::{argmax, GenerateOptions};
use scratchllm_model::lora::{self, LoraSpec, Target};
use scratchllm_model::{generate, modeldir, Gpt, GptConfig, ModelError, Weights};

fn tiny(ctx: usize, num_classes: Option<usize>) -> GptConfig {
    GptConfig {
        // A classifier reads GPT-2's ids; a language model here only its own few.
        vocab_size: if num_classes.is_some() { 50_257 } else { 97 },
        context_length: ctx,
        emb_dim: 32,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: true,
        tie_embeddings: num_classes.is_none(),
        num_classes,
        ..Default::default()
    }
}

/// A model whose final LayerNorm scale is `value` everywhere: NaN gives NaN logits, as the weights
/// saved by a diverged training run do.
fn broken(cfg: &GptConfig, value: f32) -> Gpt {
    let lm = GptConfig {
        num_classes: None,
        ..cfg.clone()
    };
    let w = Weights::random(&lm, 1, &Device::Cpu).unwrap();
    let mut t = w.tensors().clone();
    t.insert(
        "final_norm.scale".into(),
        Tensor::full(value, cfg.emb_dim, &Device::Cpu).unwrap(),
    );
    if let Some(n) = cfg.num_classes {
        // A classifier's head: (classes, C) with a bias, here all ones and zeros.
        let dev = &Device::Cpu;
        t.insert(
            "out_head.weight".into(),
            Tensor::ones((n, cfg.emb_dim), DType::F32, dev).unwrap(),
        );
        t.insert(
            "out_head.bias".into(),
            Tensor::zeros(n, DType::F32, dev).unwrap(),
        );
    }
    Gpt::new(cfg, &Weights::new(t, "runs/diverged/model.safetensors")).unwrap()
}

#[test]
fn nan_weights_are_an_error_naming_the_model_when_generating() {
    let cfg = tiny(16, None);
    let model = broken(&cfg, f32::NAN);
    // The command: temperature 1, top-k 5 panicked with an index out of bounds.
    for opts in [
        GenerateOptions {
            temperature: Some(1.0),
            top_k: Some(5),
            ..Default::default()
        },
        GenerateOptions::default(),
        GenerateOptions {
            temperature: Some(0.7),
            top_p: Some(0.9),
            ..Default::default()
        },
    ] {
        let e = generate(&model, &[1, 2, 3], &opts, &mut |_| Ok(true)).unwrap_err();
        assert!(matches!(e, ModelError::Logits { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("runs/diverged/model.safetensors")
                && msg.contains("NaN logits (97 of 97, the first at id 0)"),
            "{msg}"
        );
    }
}

#[test]
fn nan_weights_are_an_error_naming_the_model_when_classifying() {
    let cfg = tiny(16, Some(2));
    let spec = ClassifierSpec {
        labels: vec!["ham".into(), "spam".into()],
        token_position: TokenPosition::Last,
        average_embeddings: false,
        max_length: 16,
        pad_id: 0,
    };
    let tok = scratchllm_tokenizer::gpt2().unwrap();
    // Before: softmax of NaN printed `ham NaN` and exited 0.
    let e = predict(&broken(&cfg, f32::NAN), &spec, &tok, &["win a prize"], 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runs/diverged/model.safetensors") && e.contains("NaN logits (2 of 2"),
        "{e}"
    );
    // Zero scale (and zero shift): both class logits are the head's zero bias, so the classes are
    // equally likely and the first wins the tie (as torch.argmax).
    let p = predict(&broken(&cfg, 0.0), &spec, &tok, &["win a prize"], 4).unwrap();
    assert_eq!(p[0].probs, [0.5, 0.5]);
    assert_eq!(p[0].label, "ham");
}

#[test]
fn an_astronomical_max_new_tokens_allocates_nothing_up_front() {
    let cfg = tiny(16, None);
    let model = Gpt::new(&cfg, &Weights::random(&cfg, 2, &Device::Cpu).unwrap()).unwrap();
    // usize::MAX used to be `Vec::with_capacity(usize::MAX)`: a capacity-overflow panic (and
    // 10^12 an abort allocating 4 TB).
    for n in [usize::MAX, 1_000_000_000_000] {
        let opts = GenerateOptions {
            max_new_tokens: n,
            ..Default::default()
        };
        let mut seen = 0;
        let ids = generate(&model, &[1, 2], &opts, &mut |_| {
            seen += 1;
            Ok(seen < 5)
        })
        .unwrap();
        assert_eq!(ids.len(), 5);
    }
}

#[test]
fn a_long_generation_keeps_only_its_window_and_the_same_ids() {
    // 60 new tokens with a context of 8: the history is trimmed many times; the ids must be those
    // of the plain loop that feeds the last 8 ids of the whole history each step.
    let cfg = tiny(8, None);
    let model = Gpt::new(&cfg, &Weights::random(&cfg, 3, &Device::Cpu).unwrap()).unwrap();
    let prompt = [5u32, 6, 7];
    let mut history = prompt.to_vec();
    for _ in 0..60 {
        let window = &history[history.len().saturating_sub(8)..];
        let x = Tensor::new(window, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&x, None).unwrap(); // (1, T, V)
        let last: Vec<f32> = logits
            .squeeze(0)
            .unwrap()
            .get(window.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        history.push(argmax(&last));
    }
    for use_cache in [true, false] {
        let opts = GenerateOptions {
            max_new_tokens: 60,
            use_cache,
            ..Default::default()
        };
        let ids = generate(&model, &prompt, &opts, &mut |_| Ok(true)).unwrap();
        assert_eq!(ids, history[3..], "use_cache {use_cache}");
    }
}

#[test]
fn a_lora_rank_above_a_layers_width_names_the_layer_and_both_numbers() {
    let cfg = GptConfig::preset("gpt2-tiny").unwrap(); // emb_dim 64
    let spec = |rank, targets: &[Target]| LoraSpec {
        rank,
        alpha: 16.0,
        targets: targets.to_vec(),
    };
    let e = spec(100_000, &[Target::Attention])
        .validate_for(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank 100000")
            && e.contains("trf_blocks.0.att.W_query's input width 64")
            && e.contains("64 outputs x 64 inputs")
            && e.contains("at most 64"),
        "{e}"
    );
    // Feed-forward: the first layer is 256 x 64, so 64 is the limit there too.
    let e = spec(65, &[Target::FeedForward])
        .validate_for(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trf_blocks.0.ff.layers.0's input width 64")
            && e.contains("256 outputs x 64 inputs"),
        "{e}"
    );
    assert!(spec(64, &Target::ALL).validate_for(&cfg).is_ok());
    assert_eq!(spec(8, &Target::ALL).max_rank(&cfg), Some(64));
    // The output head alone: its input is the model's width.
    let e = spec(65, &[Target::Head])
        .validate_for(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("out_head's input width 64 (50257 outputs x 64 inputs)"),
        "{e}"
    );
    // `init` refuses before allocating 100000-wide adapters.
    let e = lora::init(&cfg, &spec(100_000, &Target::ALL), 0, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 100000"), "{e}");
}

#[test]
fn absurd_configurations_are_refused() {
    let good = tiny(16, None);
    assert!(good.validate().is_ok());
    let cases: [(GptConfig, &str); 6] = [
        (
            GptConfig {
                n_heads: 0,
                ..good.clone()
            },
            "every size must be positive",
        ),
        (
            GptConfig {
                context_length: 0,
                ..good.clone()
            },
            "every size must be positive",
        ),
        (
            GptConfig {
                n_heads: 5,
                ..good.clone()
            },
            "emb_dim 32 is not divisible by n_heads 5",
        ),
        (
            GptConfig {
                drop_rate: 1.0,
                ..good.clone()
            },
            "drop_rate 1 is outside [0, 1)",
        ),
        (
            GptConfig {
                drop_rate: f32::NAN,
                ..good.clone()
            },
            "drop_rate NaN is outside [0, 1)",
        ),
        (
            GptConfig {
                drop_rate: -0.5,
                ..good.clone()
            },
            "drop_rate -0.5 is outside [0, 1)",
        ),
    ];
    for (cfg, want) in cases {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{cfg:?}: {e}");
    }
}

fn load_err(path: &std::path::Path) -> String {
    match modeldir::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_device_file_is_not_called_missing() {
    let e = load_err(std::path::Path::new("/dev/zero"));
    assert!(
        e.contains("/dev/zero")
            && e.contains("is a character device, not a regular file or a directory")
            && e.contains("expected a model directory or a .safetensors file"),
        "{e}"
    );
    let e = load_err(std::path::Path::new("/no/such/model"));
    assert!(e.contains("no such file or directory"), "{e}");
}

/// A Hugging Face directory (as transformers saves it) in a temporary directory.
fn hf_dir(root: &std::path::Path) -> std::path::PathBuf {
    let cfg = GptConfig {
        qkv_bias: true,
        ..tiny(16, None)
    };
    let w = Weights::random(&cfg, 4, &Device::Cpu).unwrap();
    let tok = scratchllm_tokenizer::gpt2().unwrap();
    let dir = root.join("hf");
    modeldir::export_hf(&dir, &cfg, w.tensors(), &tok).unwrap();
    dir
}

#[test]
fn a_hugging_face_directory_without_its_config_says_so() {
    let root = tempfile::tempdir().unwrap();
    let dir = hf_dir(root.path());
    std::fs::remove_file(dir.join("config.json")).unwrap();
    // Before: "tensor tok_emb.weight is missing (not the book's layout?)".
    let e = load_err(&dir);
    assert!(
        e.contains("looked for scratchllm's and Hugging Face's")
            && e.contains("OpenAI's (hparams.json")
            && e.contains("the book's (model.safetensors with tok_emb.weight)")
            && e.contains("Hugging Face's GPT-2 names")
            && e.contains("has no config.json"),
        "{e}"
    );
    // Naming the safetensors file of a complete directory points at the directory.
    let root2 = tempfile::tempdir().unwrap();
    let full = hf_dir(root2.path());
    let e = load_err(&full.join("model.safetensors"));
    assert!(e.contains("give the directory"), "{e}");
    // Tensors of no known layout are listed.
    let other = root.path().join("other.safetensors");
    let mut t = std::collections::HashMap::new();
    t.insert(
        "encoder.weight".to_string(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    scratchllm_model::weights::write_safetensors(&t, &other).unwrap();
    let e = load_err(&other);
    assert!(
        e.contains("none of the known names") && e.contains("its tensors are: encoder.weight"),
        "{e}"
    );
}

#[test]
fn a_layer_norm_epsilon_other_than_gpt2s_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = hf_dir(root.path());
    let path = dir.join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let with = |eps: serde_json::Value| {
        let mut cfg = original.clone();
        cfg["layer_norm_epsilon"] = eps;
        std::fs::write(&path, cfg.to_string()).unwrap();
    };
    for (eps, want) in [
        (
            serde_json::json!(-1),
            "layer_norm_epsilon -1 must be a positive number",
        ),
        (
            serde_json::json!(0),
            "layer_norm_epsilon 0 must be a positive number",
        ),
        (
            serde_json::json!(1e-6),
            "layer_norm_epsilon 1e-6 is not GPT-2's 1e-5",
        ),
        (
            serde_json::json!("small"),
            "layer_norm_epsilon is \"small\", not a number",
        ),
    ] {
        with(eps);
        let e = load_err(&dir);
        assert!(e.contains("config.json") && e.contains(want), "{e}");
    }
    with(serde_json::json!(1e-5));
    assert!(modeldir::load(&dir, &Device::Cpu).is_ok());
    // Other absurd numbers of the file: zero heads, a dropout of 2.
    let mut cfg = original.clone();
    cfg["n_head"] = serde_json::json!(0);
    std::fs::write(&path, cfg.to_string()).unwrap();
    assert!(load_err(&dir).contains("every size must be positive"));
    let mut cfg = original.clone();
    cfg["resid_pdrop"] = serde_json::json!(2.0);
    std::fs::write(&path, cfg.to_string()).unwrap();
    assert!(load_err(&dir).contains("drop_rate 2 is outside [0, 1)"));
}
