//! The decoder kernels (RMSNorm, RoPE, SwiGLU/GeGLU, sliding-window softmax, grouped-query cached
//! attention) against their plain compositions in `kernels::reference`: forward values and every
//! gradient to a stated tolerance, gradients against central differences in f64, odd sizes,
//! non-contiguous inputs, bf16 inputs (which take the reference path), and a few hand-computed
//! values (Hugging Face's formulas worked out in f64).
use candle_core::{DType, Device, Tensor, Var};
use scratchllm_model::kernels::{self, reference};

/// Deterministic values in [-scale, scale].
fn tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn var(t: &Tensor) -> Var {
    // `Var::from_tensor` copies into a contiguous tensor; strided inputs are built on top of one.
    Var::from_tensor(t).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap(),
        b.to_dtype(DType::F32).unwrap(),
    );
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

/// Gradients of `sum(y * w)`, a loss that weighs every output differently.
fn grads(y: &Tensor, w: &Tensor) -> candle_core::backprop::GradStore {
    (y * w).unwrap().sum_all().unwrap().backward().unwrap()
}

fn grad<'a>(g: &'a candle_core::backprop::GradStore, v: &Var) -> &'a Tensor {
    g.get(v.as_tensor()).unwrap()
}

fn weighted_sum(y: &Tensor, w: &Tensor) -> f64 {
    let w = w.to_dtype(DType::F64).unwrap();
    (y * w).unwrap().sum_all().unwrap().to_scalar().unwrap()
}

/// Checks `grad` (of `loss` at `x`) against central differences with step `h` at every position,
/// in f64 so that the check measures the kernel, not rounding.
fn check_grad(loss: impl Fn(&Tensor) -> f64, x: &Tensor, grad: &Tensor, h: f64, tol: f64) {
    let x64 = x.to_dtype(DType::F64).unwrap();
    let xs: Vec<f64> = x64.flatten_all().unwrap().to_vec1().unwrap();
    let gs: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(xs.len(), gs.len());
    for i in 0..xs.len() {
        let at = |d: f64| {
            let mut v = xs.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, x.shape(), x.device()).unwrap())
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        let analytic = f64::from(gs[i]);
        assert!(
            (numeric - analytic).abs() <= tol * (1.0 + numeric.abs()),
            "gradient at {i}: analytic {analytic}, numeric {numeric}"
        );
    }
}

fn f64s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

fn bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap()
}

// RMSNorm: forward within 1e-5, gradients within 1e-4 (values of a few units; the reference
// divides by the root where the kernel multiplies by its inverse).

#[test]
fn rms_norm_matches_hand_computed_values() {
    let x = Tensor::new(&[[1.0f32, 2.0, 3.0]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[1.5f32, 1.5, 1.5], &Device::Cpu).unwrap();
    let y: Vec<f32> = kernels::rms_norm(&x, &w, 1e-6, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = [0.694_365, 1.388_73, 2.083_095];
    assert!(
        y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{y:?}"
    );
    // Gemma's gain is 1 + w: weight 0.5 scales as Llama's 1.5.
    let half = (w - 1.0).unwrap();
    let gemma = kernels::rms_norm(&x, &half, 1e-6, true).unwrap();
    let llama = kernels::rms_norm(&x, &(half + 1.0).unwrap(), 1e-6, false).unwrap();
    assert_eq!(max_diff(&gemma, &llama), 0.0);
}

#[test]
fn rms_norm_agrees_with_the_reference_on_odd_and_strided_inputs() {
    for (b, t, c) in [(1, 1, 1), (2, 1, 7), (2, 5, 17), (3, 4, 100)] {
        for (unit_offset, contiguous) in
            [(false, true), (true, true), (false, false), (true, false)]
        {
            let (x, w) = (var(&tensor(&[b, t, c], 1, 3.0)), var(&tensor(&[c], 2, 0.9)));
            // The same values stored column-major: strided, with the gradient still reaching `x`.
            let xs = if contiguous {
                x.as_tensor().clone()
            } else {
                let xt = x.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap();
                xt.transpose(1, 2).unwrap()
            };
            assert_eq!(xs.is_contiguous(), contiguous || t == 1 || c == 1);
            let dy = tensor(&[b, t, c], 3, 1.0);
            let fused = kernels::rms_norm(&xs, &w, 1e-6, unit_offset).unwrap();
            let plain = reference::rms_norm(&xs, &w, 1e-6, unit_offset).unwrap();
            let case = format!("({b}, {t}, {c}) offset {unit_offset} contiguous {contiguous}");
            assert!(max_diff(&fused, &plain) < 1e-5, "{case}");
            let (gf, gp) = (grads(&fused, &dy), grads(&plain, &dy));
            for v in [&x, &w] {
                let d = max_diff(grad(&gf, v), grad(&gp, v));
                assert!(
                    d < 1e-4,
                    "{case}: gradient of {:?} differs by {d}",
                    v.dims()
                );
            }
        }
    }
}

#[test]
fn rms_norm_gradients_match_finite_differences() {
    let (x, w) = (
        var(&tensor(&[2, 3, 13], 4, 2.0)),
        var(&tensor(&[13], 5, 0.8)),
    );
    let dy = tensor(&[2, 3, 13], 6, 1.0);
    for unit_offset in [false, true] {
        let g = grads(&kernels::rms_norm(&x, &w, 1e-5, unit_offset).unwrap(), &dy);
        let loss = |x: &Tensor, w: &Tensor| {
            weighted_sum(&reference::rms_norm(x, w, 1e-5, unit_offset).unwrap(), &dy)
        };
        check_grad(|t| loss(t, &f64s(&w)), &x, grad(&g, &x), 1e-5, 1e-3);
        check_grad(|t| loss(&f64s(&x), t), &w, grad(&g, &w), 1e-5, 1e-3);
    }
}

#[test]
fn rms_norm_on_bf16_takes_the_reference_path_in_f32() {
    let (x, w) = (tensor(&[2, 3, 40], 7, 3.0), tensor(&[40], 8, 0.9));
    for unit_offset in [false, true] {
        let got = kernels::rms_norm(&bf16(&x), &bf16(&w), 1e-6, unit_offset).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = reference::rms_norm(&bf16(&x), &bf16(&w), 1e-6, unit_offset).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
        // Normalized in f32, then rounded once: within bf16's half-ulp (2^-9 relative) of the
        // f32 result on the rounded inputs, values below 4 here.
        let f32s = |t: &Tensor| bf16(t).to_dtype(DType::F32).unwrap();
        let exact = kernels::rms_norm(&f32s(&x), &f32s(&w), 1e-6, unit_offset).unwrap();
        assert!(max_diff(&got, &exact) < 4.0 / 256.0);
    }
}

// RoPE: the fused pass does the reference's multiplications and additions in the same order, so
// the forward agrees exactly; gradients within 1e-6.

/// Llama's tables for `t` positions from `start`, head dimension `d` (base 10000).
fn rope_tables(start: usize, t: usize, d: usize) -> (Tensor, Tensor) {
    let angles: Vec<f32> = (start..start + t)
        .flat_map(|p| {
            (0..d / 2).map(move |i| p as f32 * 10_000f32.powf(-2.0 * i as f32 / d as f32))
        })
        .collect();
    let a = Tensor::from_vec(angles, (t, d / 2), &Device::Cpu).unwrap();
    (a.cos().unwrap(), a.sin().unwrap())
}

#[test]
fn rope_matches_hand_computed_rotate_half() {
    let x = Tensor::new(&[0.5f32, -1.0, 2.0, 1.5], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 1, 4))
        .unwrap();
    let cos = Tensor::new(&[[0.8f32, 0.6]], &Device::Cpu).unwrap();
    let sin = Tensor::new(&[[0.6f32, -0.8]], &Device::Cpu).unwrap();
    let y: Vec<f32> = kernels::rope(&x, &cos, &sin)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = [-0.8f32, 0.6, 1.9, 1.7];
    assert!(
        y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{y:?}"
    );
    // Position 0 is the identity.
    let (cos, sin) = rope_tables(0, 1, 4);
    assert_eq!(max_diff(&kernels::rope(&x, &cos, &sin).unwrap(), &x), 0.0);
}

#[test]
fn rope_agrees_with_the_reference_on_odd_and_transposed_inputs() {
    for (b, h, t, d) in [(1, 1, 1, 2), (2, 3, 1, 6), (2, 2, 5, 10), (1, 4, 7, 64)] {
        let (cos, sin) = rope_tables(3, t, d);
        for transposed in [false, true] {
            // As the models call it: (B, T, H, D) projections with heads moved forward.
            let x = if transposed {
                var(&tensor(&[b, t, h, d], 1, 2.0))
            } else {
                var(&tensor(&[b, h, t, d], 1, 2.0))
            };
            let xs = if transposed {
                x.as_tensor().transpose(1, 2).unwrap()
            } else {
                x.as_tensor().clone()
            };
            let dy = tensor(&[b, h, t, d], 2, 1.0);
            let fused = kernels::rope(&xs, &cos, &sin).unwrap();
            let plain = reference::rope(&xs, &cos, &sin).unwrap();
            let case = format!("({b}, {h}, {t}, {d}) transposed {transposed}");
            assert_eq!(max_diff(&fused, &plain), 0.0, "{case}");
            let diff = max_diff(grad(&grads(&fused, &dy), &x), grad(&grads(&plain, &dy), &x));
            assert!(diff < 1e-6, "{case}: gradient differs by {diff}");
        }
    }
}

#[test]
fn rope_gradient_matches_finite_differences_and_keeps_cos_sin_constant() {
    let (cos, sin) = rope_tables(2, 3, 6);
    let (cos, sin) = (var(&cos), var(&sin));
    let x = var(&tensor(&[1, 3, 2, 6], 3, 2.0));
    let xs = x.as_tensor().transpose(1, 2).unwrap(); // (1, 2, 3, 6), strided
    let dy = tensor(&[1, 2, 3, 6], 4, 1.0);
    let g = grads(&kernels::rope(&xs, &cos, &sin).unwrap(), &dy);
    assert!(g.get(cos.as_tensor()).is_none() && g.get(sin.as_tensor()).is_none());
    let loss = |x: &Tensor| {
        let y = reference::rope(&x.transpose(1, 2).unwrap(), &cos, &sin).unwrap();
        weighted_sum(&y, &dy)
    };
    check_grad(loss, &x, grad(&g, &x), 1e-5, 1e-5);
}

#[test]
fn rope_on_bf16_takes_the_reference_path_and_bad_shapes_are_refused() {
    let (cos, sin) = rope_tables(0, 4, 8);
    let x = tensor(&[1, 2, 4, 8], 5, 2.0);
    let got = kernels::rope(&bf16(&x), &cos, &sin).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = reference::rope(&bf16(&x), &cos, &sin).unwrap();
    assert_eq!(max_diff(&got, &want), 0.0);
    let exact = kernels::rope(&x, &cos, &sin).unwrap();
    assert!(max_diff(&got, &exact) < 0.05); // bf16 inputs, tables and products, values below 3
    let (cos3, sin3) = rope_tables(0, 3, 8);
    assert!(kernels::rope(&x, &cos3, &sin3).is_err());
    let odd = tensor(&[1, 2, 4, 7], 5, 2.0);
    assert!(kernels::rope(&odd, &cos, &sin).is_err());
}

// Gated units: forward within 1e-5 and gradients within 1e-5 (gate up to 8, up up to 2).

type Unit = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
const UNITS: [(&str, Unit, Unit); 2] = [
    ("swiglu", kernels::swiglu, reference::swiglu),
    ("geglu", kernels::geglu, reference::geglu),
];

#[test]
fn gated_units_match_hand_computed_values() {
    let gate = Tensor::new(&[1.0f32, -3.0], &Device::Cpu).unwrap();
    let up = Tensor::new(&[2.0f32, 0.5], &Device::Cpu).unwrap();
    let wants = [[1.462_117_2f32, -0.071_138_81], [1.682_384, -0.001_818_696]];
    for ((name, fused, _), want) in UNITS.into_iter().zip(wants) {
        let y: Vec<f32> = fused(&gate, &up).unwrap().to_vec1().unwrap();
        assert!(
            y.iter().zip(want).all(|(a, b)| (a - b).abs() < 2e-6),
            "{name}: {y:?}"
        );
    }
}

#[test]
fn gated_units_agree_with_the_reference_on_odd_and_strided_inputs() {
    for shape in [[1, 1], [3, 17], [7, 1001]] {
        for contiguous in [true, false] {
            let (gate, up) = (var(&tensor(&shape, 1, 8.0)), var(&tensor(&shape, 2, 2.0)));
            let view = |v: &Var| {
                if contiguous {
                    v.as_tensor().clone()
                } else {
                    v.as_tensor()
                        .t()
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .t()
                        .unwrap()
                }
            };
            let (gs, us) = (view(&gate), view(&up));
            let dy = tensor(&shape, 3, 1.0);
            for (name, fused, plain) in UNITS {
                let (f, p) = (fused(&gs, &us).unwrap(), plain(&gs, &us).unwrap());
                let case = format!("{name} {shape:?} contiguous {contiguous}");
                assert!(max_diff(&f, &p) < 1e-5, "{case}");
                let (gf, gp) = (grads(&f, &dy), grads(&p, &dy));
                for v in [&gate, &up] {
                    let d = max_diff(grad(&gf, v), grad(&gp, v));
                    assert!(d < 1e-5, "{case}: gradient differs by {d}");
                }
            }
        }
    }
}

#[test]
fn gated_unit_gradients_match_finite_differences() {
    let (gate, up) = (
        var(&tensor(&[3, 11], 4, 6.0)),
        var(&tensor(&[3, 11], 5, 2.0)),
    );
    let dy = tensor(&[3, 11], 6, 1.0);
    for (_, fused, plain) in UNITS {
        let g = grads(&fused(&gate, &up).unwrap(), &dy);
        let loss = |a: &Tensor, u: &Tensor| weighted_sum(&plain(a, u).unwrap(), &dy);
        check_grad(|t| loss(t, &f64s(&up)), &gate, grad(&g, &gate), 1e-5, 1e-4);
        check_grad(|t| loss(&f64s(&gate), t), &up, grad(&g, &up), 1e-5, 1e-4);
    }
}

#[test]
fn gated_units_on_bf16_take_the_reference_path() {
    let (gate, up) = (tensor(&[4, 9], 7, 4.0), tensor(&[4, 9], 8, 2.0));
    for (name, fused, plain) in UNITS {
        let got = fused(&bf16(&gate), &bf16(&up)).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = plain(&bf16(&gate), &bf16(&up)).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "{name}");
        let exact = fused(&gate, &up).unwrap();
        assert!(max_diff(&got, &exact) < 0.1, "{name}"); // bf16 inputs, values below 8
    }
}

// Sliding-window causal softmax: forward and gradients within 1e-6.

#[test]
fn windowed_softmax_agrees_with_the_reference_and_masks_exactly() {
    let cases = [
        (1, 1, 0, 1),
        (1, 9, 8, 3),
        (6, 6, 0, 2),
        (5, 12, 7, 5),
        (4, 4, 0, 100),
    ];
    for (t, tk, offset, w) in cases {
        for contiguous in [true, false] {
            let s = if contiguous {
                var(&tensor(&[2, 3, t, tk], 1, 8.0))
            } else {
                var(&tensor(&[2, 3, tk, t], 1, 8.0))
            };
            let ss = if contiguous {
                s.as_tensor().clone()
            } else {
                s.as_tensor().transpose(2, 3).unwrap()
            };
            let dy = tensor(&[2, 3, t, tk], 2, 1.0);
            let fused = kernels::causal_softmax_window(&ss, 0.3, offset, Some(w)).unwrap();
            let plain = reference::causal_softmax_window(&ss, 0.3, offset, Some(w)).unwrap();
            let case = format!("T {t} Tk {tk} offset {offset} window {w} contiguous {contiguous}");
            assert!(max_diff(&fused, &plain) < 1e-6, "{case}");
            let d = max_diff(grad(&grads(&fused, &dy), &s), grad(&grads(&plain, &dy), &s));
            assert!(d < 1e-6, "{case}: gradient differs by {d}");
            let y: Vec<Vec<f32>> = fused.flatten_to(2).unwrap().to_vec2().unwrap();
            for (r, row) in y.iter().enumerate() {
                let p = offset + r % t;
                for (j, &v) in row.iter().enumerate() {
                    let seen = j <= p && p - j < w;
                    assert_eq!(v == 0.0, !seen, "{case}: row {r} key {j} weight {v}");
                }
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{case}");
            }
        }
    }
}

#[test]
fn a_window_wider_than_the_context_is_the_causal_softmax_bit_for_bit() {
    let s = tensor(&[2, 2, 5, 9], 3, 6.0);
    let causal = kernels::causal_softmax(&s, 0.5, 4).unwrap();
    for w in [9, 10, 1000] {
        let windowed = kernels::causal_softmax_window(&s, 0.5, 4, Some(w)).unwrap();
        assert_eq!(max_diff(&causal, &windowed), 0.0, "window {w}");
    }
    let none = kernels::causal_softmax_window(&s, 0.5, 4, None).unwrap();
    assert_eq!(max_diff(&causal, &none), 0.0);
    assert!(kernels::causal_softmax_window(&s, 0.5, 4, Some(0)).is_err());
}

#[test]
fn windowed_softmax_gradient_matches_finite_differences() {
    let s = var(&tensor(&[1, 2, 6, 8], 4, 4.0));
    let dy = tensor(&[1, 2, 6, 8], 5, 1.0);
    let y = kernels::causal_softmax_window(&s, 0.5, 2, Some(3)).unwrap();
    let g = grads(&y, &dy);
    let loss = |s: &Tensor| {
        weighted_sum(
            &reference::causal_softmax_window(s, 0.5, 2, Some(3)).unwrap(),
            &dy,
        )
    };
    check_grad(loss, &s, grad(&g, &s), 1e-5, 1e-4);
}

#[test]
fn windowed_softmax_on_bf16_takes_the_reference_path() {
    let s = bf16(&tensor(&[1, 2, 4, 6], 6, 4.0));
    let got = kernels::causal_softmax_window(&s, 0.5, 2, Some(2)).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = reference::causal_softmax_window(&s, 0.5, 2, Some(2)).unwrap();
    assert_eq!(max_diff(&got, &want), 0.0);
}

// Grouped-query cached attention: within 1e-5 of the composition (scores of a few units).

/// The composition: Hugging Face's `repeat_kv`, scores, masked softmax, weighted values.
#[allow(clippy::too_many_arguments)]
fn plain_gqa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    nh: usize,
    n_kv: usize,
    hs: usize,
    tk: usize,
    scale: f64,
    window: Option<usize>,
) -> Tensor {
    let (b, t, _) = q.dims3().unwrap();
    let qh = q.reshape((b, t, nh, hs)).unwrap().transpose(1, 2).unwrap(); // (B, nh, T, hs)
    let repeat = |x: &Tensor| {
        let x = x
            .narrow(1, 0, tk)
            .unwrap()
            .reshape((b, tk, n_kv, hs))
            .unwrap();
        let x = x.transpose(1, 2).unwrap().unsqueeze(2).unwrap(); // (B, n_kv, 1, Tk, hs)
        let x = x.broadcast_as((b, n_kv, nh / n_kv, tk, hs)).unwrap();
        x.contiguous().unwrap().reshape((b, nh, tk, hs)).unwrap() // (B, nh, Tk, hs)
    };
    let (kh, vh) = (repeat(k), repeat(v));
    let qh = qh.contiguous().unwrap();
    let scores = qh.matmul(&kh.t().unwrap()).unwrap(); // (B, nh, T, Tk)
    let w = reference::causal_softmax_window(&scores, scale, tk - t, window).unwrap();
    let y = w.matmul(&vh).unwrap(); // (B, nh, T, hs)
    y.transpose(1, 2).unwrap().reshape((b, t, nh * hs)).unwrap()
}

#[test]
fn grouped_query_cached_attention_agrees_with_repeated_heads() {
    let (b, nh, hs, cap) = (2, 4, 6, 16);
    let scale = 0.35;
    for n_kv in [1, 2, 4] {
        for (t, tk) in [(1, 1), (1, 13), (4, 9), (9, 9)] {
            for window in [None, Some(1), Some(3), Some(100)] {
                let q = tensor(&[b, t, nh * hs], 1, 2.0);
                let k = tensor(&[b, cap, n_kv * hs], 2, 2.0);
                let v = tensor(&[b, cap, n_kv * hs], 3, 1.0);
                let got =
                    kernels::cached_attention_gqa(&q, &k, &v, nh, n_kv, hs, tk, scale, window)
                        .unwrap()
                        .unwrap();
                let want = plain_gqa(&q, &k, &v, nh, n_kv, hs, tk, scale, window);
                let d = max_diff(&got, &want);
                assert!(
                    d < 1e-5,
                    "{n_kv} kv heads, T {t}, Tk {tk}, window {window:?}: {d}"
                );
            }
        }
    }
}

#[test]
fn cached_attention_is_grouped_attention_with_one_key_head_per_query_head() {
    let (b, nh, hs, cap, t, tk) = (2, 3, 8, 12, 3, 10);
    let q = tensor(&[b, t, nh * hs], 4, 1.0);
    let k = tensor(&[b, cap, nh * hs], 5, 1.0);
    let v = tensor(&[b, cap, nh * hs], 6, 1.0);
    let old = kernels::cached_attention(&q, &k, &v, nh, tk)
        .unwrap()
        .unwrap();
    let scale = f64::from(1.0 / (hs as f32).sqrt());
    let new = kernels::cached_attention_gqa(&q, &k, &v, nh, nh, hs, tk, scale, None)
        .unwrap()
        .unwrap();
    assert_eq!(max_diff(&old, &new), 0.0);
    // A strided query (as after a transpose) gives the same values.
    let qs = q.t().unwrap().contiguous().unwrap().t().unwrap();
    let strided = kernels::cached_attention_gqa(&qs, &k, &v, nh, nh, hs, tk, scale, None)
        .unwrap()
        .unwrap();
    assert_eq!(max_diff(&strided, &new), 0.0);
}

#[test]
fn grouped_query_cached_attention_declines_bf16_and_refuses_bad_shapes() {
    let (nh, n_kv, hs) = (4, 2, 4);
    let q = tensor(&[1, 2, nh * hs], 7, 1.0);
    let k = tensor(&[1, 8, n_kv * hs], 8, 1.0);
    let gqa = |q: &Tensor, k: &Tensor, nh, n_kv, tk, window| {
        kernels::cached_attention_gqa(q, k, k, nh, n_kv, hs, tk, 0.5, window)
    };
    assert!(gqa(&bf16(&q), &bf16(&k), nh, n_kv, 5, None)
        .unwrap()
        .is_none());
    assert!(gqa(&q, &k, nh, n_kv, 5, None).unwrap().is_some());
    assert!(gqa(&q, &k, nh, 3, 5, None).is_err()); // 4 heads do not split over 3
    assert!(gqa(&q, &k, nh, 1, 5, None).is_err()); // keys are 2 heads wide
    assert!(gqa(&q, &k, nh, n_kv, 1, None).is_err()); // fewer positions than queries
    assert!(gqa(&q, &k, nh, n_kv, 9, None).is_err()); // beyond the capacity
    assert!(gqa(&q, &k, nh, n_kv, 5, Some(0)).is_err());
    kernels::set_fused(false);
    let off = gqa(&q, &k, nh, n_kv, 5, None).unwrap();
    kernels::set_fused(true);
    assert!(off.is_none());
}
