//! Batched forward passes ([`Gpt::forward_segments`], what the server's continuous batching runs)
//! against each sequence run alone: for every architecture (GPT-2, Llama 3, Qwen3, Gemma 3 with
//! its sliding layers past their window) and every weight format (f32, bf16 matrices, Q8_0, Q4_0),
//! sequences of different lengths decoded together give bit-identical logits to the same sequences
//! decoded one by one, and the chunked, batched path agrees with the plain cached forward.
use candle_core::{Device, Tensor};
use scratchllm_model::generate::argmax;
use scratchllm_model::quant::QType;
use scratchllm_model::{Gpt, GptConfig, KvCache, Segment, Weights};

#[derive(Clone, Copy, Debug)]
enum Format {
    F32,
    Bf16,
    Quant(QType),
}

fn model(preset: &str, format: Format) -> Gpt {
    let mut cfg = GptConfig::preset(preset).unwrap();
    cfg.drop_rate = 0.0;
    let w = Weights::random(&cfg, 7, &Device::Cpu).unwrap();
    let w = match format {
        Format::F32 => w.converted(false).unwrap(),
        Format::Bf16 => w.converted(true).unwrap(),
        Format::Quant(q) => w.converted(false).unwrap().quantized(&cfg, q).unwrap(),
    };
    Gpt::new(&cfg, &w).unwrap()
}

/// Prompts of different lengths (ids spread over the vocabulary).
fn prompts(n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..3 + 7 * i)
                .map(|j| ((i * 7919 + j * 104_729) % 50_000) as u32)
                .collect()
        })
        .collect()
}

/// One sequence: its ids, how many are in its cache, and every row of logits it was given.
struct Seq {
    ids: Vec<u32>,
    fed: usize,
    cache: KvCache,
    logits: Vec<Vec<f32>>,
}

/// Greedy continuations, `new` tokens after each prompt; prompts fed alone in chunks of `chunk`,
/// then the decode steps of all sequences in one pass each (`together`) or of each alone.
fn greedy(model: &Gpt, prompts: &[Vec<u32>], new: usize, chunk: usize, together: bool) -> Vec<Seq> {
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .map(|p| Seq {
            ids: p.clone(),
            fed: 0,
            cache: model.preallocated_cache(p.len() + new).unwrap(),
            logits: Vec::new(),
        })
        .collect();
    for s in &mut seqs {
        let n = s.ids.len();
        while s.fed < n {
            let end = (s.fed + chunk).min(n);
            let mut segs = [Segment {
                ids: &s.ids[s.fed..end],
                cache: &mut s.cache,
            }];
            let l = model.forward_segments(&mut segs).unwrap();
            s.fed = end;
            if end == n {
                let row: Vec<f32> = l.squeeze(0).unwrap().to_vec1().unwrap();
                s.ids.push(argmax(&row));
                s.logits.push(row);
            }
        }
    }
    for _ in 1..new {
        let groups: Vec<Vec<usize>> = if together {
            vec![(0..seqs.len()).collect()]
        } else {
            (0..seqs.len()).map(|i| vec![i]).collect()
        };
        for group in groups {
            let mut segs: Vec<Segment> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| group.contains(i))
                .map(|(_, s)| Segment {
                    ids: &s.ids[s.fed..],
                    cache: &mut s.cache,
                })
                .collect();
            let rows: Vec<Vec<f32>> = model
                .forward_segments(&mut segs)
                .unwrap()
                .to_vec2()
                .unwrap();
            for (&i, row) in group.iter().zip(rows) {
                let s = &mut seqs[i];
                s.fed = s.ids.len();
                s.ids.push(argmax(&row));
                s.logits.push(row);
            }
        }
    }
    seqs
}

fn check(preset: &str, format: Format) {
    let model = model(preset, format);
    let prompts = prompts(5);
    // Gemma 3's tiny window is 32: the longest sequence (31 + 40 tokens) slides past it.
    let (new, chunk) = (40, 8);
    let alone = greedy(&model, &prompts, new, chunk, false);
    let together = greedy(&model, &prompts, new, chunk, true);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.ids, b.ids, "{preset} {format:?}: sequence {i}'s ids");
        for (step, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
            assert!(
                x == y,
                "{preset} {format:?}: sequence {i}'s logits at step {step} differ batched"
            );
        }
    }
    // The plain path: the whole prompt in one cached pass, then one token at a time.
    for (i, s) in alone.iter().enumerate() {
        let mut cache = model.new_cache();
        let n = prompts[i].len();
        for step in 0..new {
            let input = if step == 0 {
                &s.ids[..n]
            } else {
                &s.ids[n + step - 1..n + step]
            };
            let x = Tensor::new(input, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let l = model.forward_cached(&x, &mut cache).unwrap();
            let t = l.dims()[1];
            let row: Vec<f32> = l
                .narrow(1, t - 1, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = row
                .iter()
                .zip(&s.logits[step])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-4,
                "{preset} {format:?}: sequence {i} step {step}: the chunked pass is {diff} from the plain one"
            );
        }
    }
}

#[test]
fn batched_decoding_equals_decoding_alone_for_every_architecture_and_format() {
    for preset in ["gpt2-tiny", "llama3-tiny", "qwen3-tiny", "gemma3-tiny"] {
        for format in [
            Format::F32,
            Format::Bf16,
            Format::Quant(QType::Q8_0),
            Format::Quant(QType::Q4_0),
        ] {
            check(preset, format);
        }
    }
}

#[test]
fn a_preallocated_cache_takes_the_bytes_it_announces() {
    for preset in ["gpt2-tiny", "gemma3-tiny"] {
        let m = model(preset, Format::F32);
        for positions in [1, 50, 100] {
            let c = m.preallocated_cache(positions).unwrap();
            assert_eq!(c.bytes(), m.cache_bytes(positions), "{preset} {positions}");
        }
    }
    // gpt2-tiny: 2 layers x (k, v) x 64 values x 4 bytes per position.
    let m = model("gpt2-tiny", Format::F32);
    assert_eq!(m.cache_bytes(100), 100 * 2 * 2 * 64 * 4);
    // gemma3-tiny: two sliding layers keep at most 2 x 32 positions, the global one all of them.
    let g = model("gemma3-tiny", Format::F32);
    assert_eq!(g.cache_bytes(100), (64 + 64 + 100) * 2 * 16 * 4);
}

#[test]
fn a_batched_pass_refuses_empty_segments_and_positions_past_the_context() {
    let m = model("gpt2-tiny", Format::F32);
    let e = m.forward_segments(&mut []).unwrap_err().to_string();
    assert!(e.contains("at least one segment"), "{e}");
    let mut cache = m.new_cache();
    let e = m
        .forward_segments(&mut [Segment {
            ids: &[],
            cache: &mut cache,
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no tokens"), "{e}");
    let long = vec![1u32; 257];
    let e = m
        .forward_segments(&mut [Segment {
            ids: &long,
            cache: &mut cache,
        }])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("257 positions exceed the context length 256"),
        "{e}"
    );
}
