//! GGUF files of the fixture models (../shared/fixtures: GPT-2, Llama 3, Qwen3, Gemma 3, made by
//! transformers): the F32 file we write loads back with transformers' logits (1e-4 max abs) and
//! tokenization; writing a loaded file again gives the same bytes (F32, F16, Q8_0, Q4_0); and the
//! quantized files' next-token distributions stay near the model's.
use candle_core::{DType, Device, IndexOp, Tensor};
use scratchllm_model::modeldir::{self, gguf::GgufQuant};
use scratchllm_model::quant::QType;
use scratchllm_model::{Gpt, ModelFiles};
use scratchllm_testutil::{json_ids as ids, shared, shared_json};
use std::path::PathBuf;

/// (name, directory under ../shared, key of the prompt ids, logits key suffix).
const FIXTURES: [(&str, &str, &str, &str); 4] = [
    ("gpt2-tiny", "fixtures/gpt2-tiny", "input_ids", ".logits"),
    ("llama3-tiny", "fixtures/arch/llama3-tiny", "ids", ""),
    ("qwen3-tiny", "fixtures/arch/qwen3-tiny", "ids", ""),
    ("gemma3-tiny", "fixtures/arch/gemma3-tiny", "ids", ""),
];

/// The model directory of a fixture (GPT-2's Hugging Face directory sits in `hf/`).
fn model_dir(name: &str, rel: &str) -> Option<PathBuf> {
    shared(&if name == "gpt2-tiny" {
        format!("{rel}/hf")
    } else {
        rel.to_string()
    })
}

/// Each prompt's text, ids and transformers' logits (T, V).
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
            (
                p["text"].as_str().unwrap().to_string(),
                ids(&p[ids_key]),
                logits[&format!("prompt{i}{suffix}")].clone(),
            )
        })
        .collect()
}

fn logits(files: &ModelFiles, ids: &[u32]) -> Tensor {
    let model = Gpt::new(&files.config, &files.weights).unwrap();
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&x, None)
        .unwrap()
        .i(0)
        .unwrap()
        .to_dtype(DType::F32)
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

/// Half the L1 distance between the softmaxes of two logit rows.
fn total_variation(a: &Tensor, b: &Tensor) -> f64 {
    let p = |t: &Tensor| -> Vec<f64> {
        let v: Vec<f32> = t.to_vec1().unwrap();
        let m = v.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    };
    p(a).iter()
        .zip(p(b))
        .map(|(x, y)| (x - y).abs())
        .sum::<f64>()
        / 2.0
}

fn write(files: &ModelFiles, path: &std::path::Path, quant: GgufQuant) {
    modeldir::gguf::write_gguf(path, &files.config, &files.weights, &files.tokenizer, quant)
        .unwrap();
}

#[test]
fn f32_files_we_write_give_transformers_logits_and_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, rel, ids_key, suffix) in FIXTURES {
        let Some(dir) = model_dir(name, rel) else {
            return;
        };
        let files = modeldir::load_stored(&dir, &Device::Cpu).unwrap();
        let path = tmp.path().join(format!("{name}.gguf"));
        write(&files, &path, GgufQuant::F32);
        let back = modeldir::load_stored(&path, &Device::Cpu).unwrap();
        assert_eq!(back.layout, modeldir::Layout::Gguf, "{name}");
        for (i, (text, prompt, want)) in prompts(rel, ids_key, suffix).into_iter().enumerate() {
            assert_eq!(
                back.tokenizer.encode_ordinary(&text),
                prompt,
                "{name} prompt {i} ids"
            );
            let diff = max_diff(&logits(&back, &prompt), &want);
            assert!(
                diff < 1e-4,
                "{name} prompt {i}: max abs logit difference {diff}"
            );
        }
    }
}

#[test]
fn writing_a_loaded_file_again_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, rel, ..) in FIXTURES {
        let Some(dir) = model_dir(name, rel) else {
            return;
        };
        let files = modeldir::load_stored(&dir, &Device::Cpu).unwrap();
        for quant in [
            GgufQuant::F32,
            GgufQuant::F16,
            GgufQuant::Blocks(QType::Q8_0),
            GgufQuant::Blocks(QType::Q4_0),
        ] {
            let a = tmp.path().join(format!("{name}-a.gguf"));
            let b = tmp.path().join(format!("{name}-b.gguf"));
            write(&files, &a, quant);
            let loaded = modeldir::load_stored(&a, &Device::Cpu).unwrap();
            write(&loaded, &b, GgufQuant::Stored);
            let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            assert!(
                x == y,
                "{name} {quant:?}: the second file differs ({} vs {} bytes)",
                x.len(),
                y.len()
            );
        }
    }
}

/// The RMS of `got - want` over the RMS of `want` about its mean: a logit error that does not
/// depend on how peaked the distribution is.
fn relative_rms(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w): (Vec<f32>, Vec<f32>) = (got.to_vec1().unwrap(), want.to_vec1().unwrap());
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    let err: f64 = g
        .iter()
        .zip(&w)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let spread: f64 = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
    (err / spread).sqrt()
}

#[test]
fn quantized_files_stay_near_the_model() {
    // Measured (last token of each prompt, relative RMS logit error / total variation):
    // Q8_0 1.5-7% / 0.005-0.054, Q4_0 19-108% / 0.05-0.72. The fixtures' random weights amplify
    // an error layer after layer, Llama 3's and Qwen3's most (their distributions are also the most
    // peaked); llama.cpp on the same files lands on the same distributions (tests/gguf_llamacpp.rs
    // checks that, and that it is as far from the unquantized model as we are). Per matrix, the
    // errors are those of tests/quant.rs. The bounds are a little above the worst fixture.
    let tmp = tempfile::tempdir().unwrap();
    for (name, rel, ids_key, suffix) in FIXTURES {
        let Some(dir) = model_dir(name, rel) else {
            return;
        };
        let files = modeldir::load_stored(&dir, &Device::Cpu).unwrap();
        for (quant, bound) in [(QType::Q8_0, 0.1), (QType::Q4_0, 1.3)] {
            let path = tmp.path().join(format!("{name}-{}.gguf", quant.name()));
            write(&files, &path, GgufQuant::Blocks(quant));
            let back = modeldir::load_stored(&path, &Device::Cpu).unwrap();
            for (i, (_, prompt, want)) in prompts(rel, ids_key, suffix).into_iter().enumerate() {
                let got = logits(&back, &prompt);
                let t = prompt.len() - 1;
                let (got, want) = (got.i(t).unwrap(), want.i(t).unwrap());
                let (err, tv) = (relative_rms(&got, &want), total_variation(&got, &want));
                eprintln!(
                    "{name} {} prompt {i}: relative logit error {err:.4}, total variation {tv:.4}",
                    quant.name()
                );
                assert!(
                    err < bound,
                    "{name} {}: prompt {i} relative logit error {err}",
                    quant.name()
                );
            }
        }
    }
}

#[test]
fn quantizing_on_load_equals_loading_the_quantized_file() {
    // `--dtype q8_0` on the safetensors and the Q8_0 GGUF we write compute the same logits. The
    // file holds the embedding in Q8_0 too (as llama.cpp's converter writes it) while quantizing on
    // load keeps it as it is, so the model quantized on load is given the file's embedding first.
    let tmp = tempfile::tempdir().unwrap();
    for (name, rel, ids_key, suffix) in FIXTURES {
        let Some(dir) = model_dir(name, rel) else {
            return;
        };
        for qtype in [QType::Q8_0, QType::Q4_0] {
            let files = modeldir::load_stored(&dir, &Device::Cpu).unwrap();
            let path = tmp.path().join("q.gguf");
            write(&files, &path, GgufQuant::Blocks(qtype));
            let from_file = modeldir::load_stored(&path, &Device::Cpu).unwrap();
            let source = files.weights.source().to_string();
            let mut tensors = files.weights.into_tensors();
            let emb = from_file.weights.tensors()["tok_emb.weight"].clone();
            tensors.insert("tok_emb.weight".into(), emb);
            let mut files = ModelFiles {
                weights: scratchllm_model::Weights::new(tensors, source),
                ..files
            };
            files
                .prepare_inference(Some(scratchllm_model::InferenceDtype::Quant(qtype)))
                .unwrap();
            for (_, prompt, _) in prompts(rel, ids_key, suffix) {
                let diff = max_diff(&logits(&files, &prompt), &logits(&from_file, &prompt));
                assert!(
                    diff < 1e-5,
                    "{name} {}: max abs logit difference {diff}",
                    qtype.name()
                );
            }
        }
    }
}
