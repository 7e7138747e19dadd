//! The three GPT-2 layouts of ../shared/fixtures/gpt2-tiny give transformers' logits (to 1e-4, max
//! abs) and its greedy continuations exactly, with and without the KV cache.
use candle_core::{Device, IndexOp, Tensor};
use scratchllm_model::{generate, modeldir, GenerateOptions, Gpt, Layout};
use scratchllm_testutil::{json_ids as ids, shared, shared_json};
use std::path::Path;

fn check_layout(path: &Path, layout: Layout) {
    let (Some(expected), Some(logits_path)) = (
        shared_json("fixtures/gpt2-tiny/expected.json"),
        shared("fixtures/gpt2-tiny/expected-logits.safetensors"),
    ) else {
        return;
    };
    let dev = Device::Cpu;
    let files = modeldir::load(path, &dev).unwrap();
    assert_eq!(files.layout, layout);
    let model = Gpt::new(&files.config, &files.weights).unwrap();
    let want_logits = candle_core::safetensors::load(logits_path, &dev).unwrap();
    for (i, p) in expected["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&p["input_ids"]);
        assert_eq!(
            files.tokenizer.encode_ordinary(p["text"].as_str().unwrap()),
            prompt
        );
        let x = Tensor::new(prompt.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got = model.forward(&x, None).unwrap().i(0).unwrap(); // (T, V)
        let want = &want_logits[&format!("prompt{i}.logits")];
        let diff = (&got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff < 1e-4,
            "{layout:?} prompt {i}: max abs logit difference {diff}"
        );
        let greedy = ids(&p["greedy_ids"]);
        for use_cache in [true, false] {
            let opts = GenerateOptions {
                max_new_tokens: greedy.len(),
                stop_id: Some(50256),
                use_cache,
                ..Default::default()
            };
            let out = generate(&model, &prompt, &opts, &mut |_| Ok(true)).unwrap();
            assert_eq!(out, greedy, "{layout:?} prompt {i} cache {use_cache}");
        }
        assert_eq!(
            files.tokenizer.decode(&greedy).unwrap(),
            p["greedy_text"].as_str().unwrap()
        );
    }
}

#[test]
fn hugging_face_layout_matches_transformers() {
    let Some(dir) = shared("fixtures/gpt2-tiny/hf") else {
        return;
    };
    check_layout(&dir, Layout::HuggingFace);
}

#[test]
fn book_layout_matches_transformers() {
    let Some(file) = shared("fixtures/gpt2-tiny/book/model.safetensors") else {
        return;
    };
    check_layout(&file, Layout::Book);
}

#[test]
fn openai_tensorflow_checkpoint_matches_transformers() {
    let Some(dir) = shared("fixtures/gpt2-tiny/openai-tf") else {
        return;
    };
    check_layout(&dir, Layout::OpenAiTf);
}
