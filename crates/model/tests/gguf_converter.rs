//! GGUF files made by llama.cpp's own converter (`convert_hf_to_gguf.py`, the tool behind the files
//! people download) from the fixture directories load in scratchllm with transformers' logits
//! (F32, 1e-4 max abs) and tokenization.
//!
//! Two things the converter cannot do for these fixtures are done for it: it recognizes a
//! tokenizer's split pattern by hashing the real families' tokenizations, which the fixtures' small
//! vocabulary is not, so the pattern's name (Llama 3's split, GPT-2's for GPT-2) is handed to it;
//! and it writes no `sliding_window_pattern` for Gemma 3 (llama.cpp then assumes the published
//! models' 6, the fixture has 3), so the Gemma file is compared with llama.cpp's probabilities on the
//! same file (`$SCRATCHLLM_LLAMACPP`) instead of transformers'.
//!
//! The converter imports torch, which CI does not install, so this test is ignored by default;
//! `scripts/check_gguf_converter.sh` runs it with the peers' Python (`../shared/peers/setup.sh`):
//! `SCRATCHLLM_PEERS_PYTHON=/path/to/venv/bin/python cargo test --test gguf_converter -- --ignored`.
use candle_core::{DType, Device, IndexOp, Tensor};
use scratchllm_model::{modeldir, Gpt};
use scratchllm_testutil::{json_ids as ids, shared, shared_json};
use std::path::Path;
use std::process::Command;

const FIXTURES: [(&str, &str, &str, &str); 4] = [
    ("gpt2-tiny", "fixtures/gpt2-tiny", "input_ids", ".logits"),
    ("llama3-tiny", "fixtures/arch/llama3-tiny", "ids", ""),
    ("qwen3-tiny", "fixtures/arch/qwen3-tiny", "ids", ""),
    ("gemma3-tiny", "fixtures/arch/gemma3-tiny", "ids", ""),
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn softmax(t: &Tensor) -> Vec<f64> {
    let v: Vec<f32> = t.to_vec1().unwrap();
    let m = v.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[test]
#[ignore = "needs torch for llama.cpp's converter: scripts/check_gguf_converter.sh"]
fn files_from_llamacpps_converter_give_transformers_logits() {
    let python = std::env::var("SCRATCHLLM_PEERS_PYTHON").expect("SCRATCHLLM_PEERS_PYTHON");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bundle = root.join("target/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("llama.cpp");
    let ok = Command::new("git")
        .args(["clone", "-q"])
        .arg(&bundle)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git clone {}", bundle.display());
    for (name, rel, ids_key, suffix) in FIXTURES {
        let Some(fixture) = shared(&if name == "gpt2-tiny" {
            format!("{rel}/hf")
        } else {
            rel.into()
        }) else {
            return;
        };
        let dir = tmp.path().join(name);
        copy_dir(&fixture, &dir);
        if name == "gpt2-tiny" {
            // The converter reads GPT-2's context from n_ctx, which transformers no longer writes.
            let path = dir.join("config.json");
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            cfg["n_ctx"] = cfg["n_positions"].clone();
            std::fs::write(&path, cfg.to_string()).unwrap();
        }
        let out = tmp.path().join(format!("{name}.gguf"));
        let pre = if name == "gpt2-tiny" {
            "gpt-2"
        } else {
            "llama-bpe"
        };
        let run = format!(
            "import sys; sys.path[:0] = [{src:?}, {gguf_py:?}]\n\
             import conversion.base as base\n\
             base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre:?}\n\
             import convert_hf_to_gguf\n\
             sys.argv = ['convert_hf_to_gguf.py', {dir:?}, '--outtype', 'f32', '--outfile', {out:?}]\n\
             convert_hf_to_gguf.main()",
            src = src.display().to_string(),
            gguf_py = src.join("gguf-py").display().to_string(),
            dir = dir.display().to_string(),
            out = out.display().to_string(),
        );
        let status = Command::new(&python).args(["-c", &run]).status().unwrap();
        assert!(status.success(), "{name}: convert_hf_to_gguf.py failed");
        let files = modeldir::load_stored(&out, &Device::Cpu).unwrap();
        let model = Gpt::new(&files.config, &files.weights).unwrap();
        let expected = shared_json(&format!("{rel}/expected.json")).unwrap();
        let logits = shared(&format!("{rel}/expected-logits.safetensors")).unwrap();
        let logits = candle_core::safetensors::load(logits, &Device::Cpu).unwrap();
        for (i, p) in expected["prompts"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&p[ids_key]);
            let text = p["text"].as_str().unwrap();
            assert_eq!(
                files.tokenizer.encode_ordinary(text),
                prompt,
                "{name} prompt {i} ids"
            );
            let x = Tensor::new(prompt.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let got = model
                .forward(&x, None)
                .unwrap()
                .i(0)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            if name == "gemma3-tiny" {
                let script = std::env::var("SCRATCHLLM_LLAMACPP").expect("SCRATCHLLM_LLAMACPP");
                let driver = Path::new(&script).with_file_name("scratchllm-driver.mjs");
                std::fs::write(&driver, include_str!("llamacpp/driver.mjs")).unwrap();
                let last = got.i(prompt.len() - 1).unwrap();
                let ours = softmax(&last);
                let arg = serde_json::json!([prompt]).to_string();
                let out = Command::new("node")
                    .arg(&driver)
                    .args(["probs", out.to_str().unwrap(), &arg])
                    .output()
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let diff = v["probabilities"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(id, p)| (p.as_f64().unwrap() - ours[id.parse::<usize>().unwrap()]).abs())
                    .fold(0.0, f64::max);
                eprintln!("{name} prompt {i}: converter's GGUF, ours vs llama.cpp max abs probability difference {diff:.2e}");
                assert!(diff < 1e-4, "{name} prompt {i}: {diff}");
                continue;
            }
            let want = &logits[&format!("prompt{i}{suffix}")];
            let diff: f32 = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            eprintln!("{name} prompt {i}: converter's GGUF, max abs logit difference {diff:.2e}");
            assert!(diff < 1e-4, "{name} prompt {i}: {diff}");
        }
    }
}
