//! llama.cpp itself on the GGUF files we write (`$SCRATCHLLM_LLAMACPP`: the `llamacpp.mjs` that
//! `scripts/test.sh` installs from ../shared/peers/llamacpp, llama.cpp prebuilt through
//! node-llama-cpp, driven by `llamacpp/driver.mjs`): for each fixture (GPT-2, Llama 3, Qwen3,
//! Gemma 3),
//! - the F32 file loads, and llama.cpp's next-token probabilities after every prompt equal the
//!   softmax of transformers' logits to 1e-4 (absolute, every token of the vocabulary);
//! - llama.cpp's tokenization of the prompts equals transformers' (and so ours);
//! - on the Q8_0 and Q4_0 files, our next-token distribution and llama.cpp's differ by a total
//!   variation under 0.02 and 0.05, and they are as far from the unquantized model (their total
//!   variations to it differ by less than half that).
use candle_core::{DType, Device, IndexOp, Tensor};
use scratchllm_model::modeldir::{self, gguf::GgufQuant};
use scratchllm_model::quant::QType;
use scratchllm_model::{Gpt, ModelFiles};
use scratchllm_testutil::{json_ids as ids, shared, shared_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURES: [(&str, &str, &str, &str); 4] = [
    ("gpt2-tiny", "fixtures/gpt2-tiny", "input_ids", ".logits"),
    ("llama3-tiny", "fixtures/arch/llama3-tiny", "ids", ""),
    ("qwen3-tiny", "fixtures/arch/qwen3-tiny", "ids", ""),
    ("gemma3-tiny", "fixtures/arch/gemma3-tiny", "ids", ""),
];

/// The llama.cpp driver script, or `None` (after saying why) when the test should skip; under
/// `CI=true` it must be there.
fn llamacpp() -> Option<PathBuf> {
    let found = std::env::var_os("SCRATCHLLM_LLAMACPP")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if found.is_none() {
        let msg = "llama.cpp not found: set SCRATCHLLM_LLAMACPP to the llamacpp.mjs that scripts/test.sh installs";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; it is required under CI=true");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// Our llama.cpp driver (`llamacpp/driver.mjs`: several prompts per process, an f32 KV cache),
/// put beside `llamacpp.mjs`, where node finds the node-llama-cpp package.
fn driver(llamacpp: &Path) -> PathBuf {
    let path = llamacpp.with_file_name("scratchllm-driver.mjs");
    std::fs::write(&path, include_str!("llamacpp/driver.mjs")).unwrap();
    path
}

/// The JSON lines the driver prints for `what` on `gguf`.
fn run(driver: &Path, what: &str, gguf: &Path, arg: &Value) -> Vec<Value> {
    let out = Command::new("node")
        .arg(driver)
        .args([what, gguf.to_str().unwrap(), &arg.to_string()])
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "driver.mjs {what} {} failed: {}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// llama.cpp's next-token probabilities after each prompt, by token id.
fn llama_probs(driver: &Path, gguf: &Path, prompts: &[Vec<u32>], vocab: usize) -> Vec<Vec<f64>> {
    run(driver, "probs", gguf, &serde_json::json!(prompts))
        .into_iter()
        .map(|v| {
            let mut p = vec![0.0; vocab];
            for (id, prob) in v.as_object().unwrap() {
                p[id.parse::<usize>().unwrap()] = prob.as_f64().unwrap();
            }
            p
        })
        .collect()
}

fn softmax(t: &Tensor) -> Vec<f64> {
    let v: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    let m = v.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn prompts(rel: &str, ids_key: &str, suffix: &str) -> Vec<(String, Vec<u32>, Tensor)> {
    let expected = shared_json(&format!("{rel}/expected.json")).unwrap();
    let logits = shared(&format!("{rel}/expected-logits.safetensors")).unwrap();
    let logits = candle_core::safetensors::load(logits, &Device::Cpu).unwrap();
    expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let want: &Tensor = &logits[&format!("prompt{i}{suffix}")];
            let last = want.i(want.dim(0).unwrap() - 1).unwrap();
            (
                p["text"].as_str().unwrap().to_string(),
                ids(&p[ids_key]),
                last,
            )
        })
        .collect()
}

fn fixture_files(name: &str, rel: &str) -> Option<ModelFiles> {
    let dir = shared(&if name == "gpt2-tiny" {
        format!("{rel}/hf")
    } else {
        rel.to_string()
    })?;
    Some(modeldir::load_stored(&dir, &Device::Cpu).unwrap())
}

fn write(files: &ModelFiles, path: &Path, quant: GgufQuant) {
    modeldir::gguf::write_gguf(path, &files.config, &files.weights, &files.tokenizer, quant)
        .unwrap();
}

#[test]
fn llamacpp_computes_transformers_probabilities_on_our_f32_files_and_tokenizes_alike() {
    let Some(script) = llamacpp() else { return };
    let driver = driver(&script);
    let tmp = tempfile::tempdir().unwrap();
    for (name, rel, ids_key, suffix) in FIXTURES {
        let Some(files) = fixture_files(name, rel) else {
            return;
        };
        let path = tmp.path().join(format!("{name}.gguf"));
        write(&files, &path, GgufQuant::F32);
        let prompts = prompts(rel, ids_key, suffix);
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.1.clone()).collect();
        let texts: Vec<&str> = prompts.iter().map(|p| p.0.as_str()).collect();
        let theirs = llama_probs(&driver, &path, &prompt_ids, files.config.vocab_size);
        let tokens = run(&driver, "tokenize", &path, &serde_json::json!(texts));
        for (i, (_, prompt, want)) in prompts.iter().enumerate() {
            let diff = theirs[i]
                .iter()
                .zip(softmax(want))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!("{name} prompt {i}: llama.cpp vs transformers, max abs probability difference {diff:.2e}");
            assert!(diff < 1e-4, "{name} prompt {i}: {diff}");
            assert_eq!(
                &ids(&tokens[i]),
                prompt,
                "{name} prompt {i}: llama.cpp's tokens"
            );
        }
    }
}

/// The CPU, for failure messages: llama.cpp's prebuilt picks its kernels by the CPU's features.
fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let amx = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "amx_int8"));
    format!(
        "{}{}",
        field("model name").unwrap_or_else(|| "an unknown CPU".into()),
        if amx { ", with AMX" } else { "" }
    )
}

#[test]
fn on_quantized_files_our_distribution_is_llamacpps() {
    let Some(script) = llamacpp() else { return };
    let driver = driver(&script);
    let tmp = tempfile::tempdir().unwrap();
    for (name, rel, ids_key, suffix) in FIXTURES {
        let Some(files) = fixture_files(name, rel) else {
            return;
        };
        let prompts = prompts(rel, ids_key, suffix);
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.1.clone()).collect();
        for (quant, bound) in [(QType::Q8_0, 0.02), (QType::Q4_0, 0.05)] {
            let path = tmp.path().join(format!("{name}-{}.gguf", quant.name()));
            write(&files, &path, GgufQuant::Blocks(quant));
            let ours = modeldir::load_stored(&path, &Device::Cpu).unwrap();
            let model = Gpt::new(&ours.config, &ours.weights).unwrap();
            let theirs = llama_probs(&driver, &path, &prompt_ids, files.config.vocab_size);
            for (i, (_, prompt, want)) in prompts.iter().enumerate() {
                let x = Tensor::new(prompt.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = model
                    .forward(&x, None)
                    .unwrap()
                    .i((0, prompt.len() - 1))
                    .unwrap();
                let mine = softmax(&logits);
                let tv = |a: &[f64], b: &[f64]| {
                    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
                };
                let exact = softmax(want);
                let ours_theirs = tv(&mine, &theirs[i]);
                eprintln!(
                    "{name} {} prompt {i}: total variation ours vs llama.cpp {ours_theirs:.4}, \
                     ours vs unquantized {:.4}, llama.cpp vs unquantized {:.4}",
                    quant.name(),
                    tv(&mine, &exact),
                    tv(&theirs[i], &exact)
                );
                assert!(
                    ours_theirs < bound,
                    "{name} {} prompt {i}: {ours_theirs} (on {})",
                    quant.name(),
                    cpu_name()
                );
                // As far from the unquantized model as llama.cpp is.
                let gap = (tv(&mine, &exact) - tv(&theirs[i], &exact)).abs();
                assert!(
                    gap < bound / 2.0,
                    "{name} {} prompt {i}: {gap}",
                    quant.name()
                );
            }
        }
    }
}
