//! Properties of sampling and of class probabilities over arbitrary logits (NaN, ±inf, all equal,
//! huge and tiny values) and arbitrary settings: a token or a typed error, never a panic, and the
//! token always one the settings allow. The server samples through the same `pick` (its request
//! settings are driven in scratchllm-serve's own property test).
use proptest::prelude::*;
use rand::SeedableRng;
use scratchllm_model::classifier::class_probs;
use scratchllm_model::generate::{check_logits, pick, GenerateOptions, LogitsError};

/// One logit: mostly ordinary values, often extremes and non-finite ones.
fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -20.0f32..20.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(f32::MIN),
        1 => Just(f32::MIN_POSITIVE),
        1 => Just(1e-40f32), // subnormal
        1 => Just(0.0f32),
        1 => any::<f32>(),
    ]
}

/// Rows of logits: arbitrary, all equal, or ordinary values with one extreme planted.
fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(logit(), 0..40),
        (logit(), 1usize..40).prop_map(|(x, n)| vec![x; n]),
        (
            prop::collection::vec(-5.0f32..5.0, 1..40),
            logit(),
            any::<prop::sample::Index>()
        )
            .prop_map(|(mut v, x, at)| {
                let i = at.index(v.len());
                v[i] = x;
                v
            }),
    ]
}

/// Any settings `GenerateOptions::validate` accepts: greedy, or a temperature from tiny to huge,
/// with top-k (including 1 and far above the vocabulary) and top-p anywhere in (0, 1].
fn options() -> impl Strategy<Value = GenerateOptions> {
    let temperature = prop_oneof![
        Just(None),
        (1e-30f32..1e-3).prop_map(Some),
        (0.01f32..5.0).prop_map(Some),
        (1e3f32..f32::MAX).prop_map(Some),
    ];
    let top_k = prop_oneof![
        Just(None),
        (1usize..50).prop_map(Some),
        Just(Some(usize::MAX))
    ];
    let top_p = prop_oneof![Just(None), (1e-6f32..=1.0).prop_map(Some), Just(Some(1.0))];
    (temperature, top_k, top_p, any::<u64>()).prop_map(|(temperature, top_k, top_p, seed)| {
        GenerateOptions {
            temperature,
            top_k: temperature.and(top_k),
            top_p: temperature.and(top_p),
            seed,
            ..Default::default()
        }
    })
}

/// What `check_logits` must say about `v`, computed independently.
fn expected_problem(v: &[f32]) -> Option<&'static str> {
    if v.is_empty() {
        Some("empty")
    } else if v.iter().any(|x| x.is_nan()) {
        Some("nan")
    } else if v.contains(&f32::INFINITY) {
        Some("inf")
    } else if v.iter().all(|&x| x == f32::NEG_INFINITY) {
        Some("no candidate")
    } else {
        None
    }
}

fn kind(e: &LogitsError) -> &'static str {
    match e {
        LogitsError::Empty => "empty",
        LogitsError::NaN { .. } => "nan",
        LogitsError::Infinite { .. } => "inf",
        LogitsError::NoCandidate { .. } => "no candidate",
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pick_returns_an_allowed_token_or_a_typed_error(v in logits(), opts in options()) {
        prop_assert!(opts.validate().is_ok(), "{opts:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        match (pick(&v, &opts, &mut rng), expected_problem(&v)) {
            (Err(e), Some(want)) => {
                prop_assert_eq!(kind(&e), want);
                prop_assert_eq!(check_logits(&v), Err(e));
            }
            (Err(e), None) => prop_assert!(false, "refused good logits {:?}: {}", v, e),
            (Ok(id), Some(want)) => prop_assert!(false, "token {} from {} logits {:?}", id, want, v),
            (Ok(id), None) => {
                let id = id as usize;
                prop_assert!(id < v.len());
                // A masked (-inf) token is never drawn.
                prop_assert!(v[id].is_finite(), "token {} has logit {}", id, v[id]);
                let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if opts.temperature.is_none() {
                    // Greedy: the first maximum (all-equal logits give id 0).
                    let first = v.iter().position(|&x| x == max);
                    prop_assert_eq!(Some(id), first);
                }
                if let Some(k) = opts.top_k {
                    // At least as large as the k-th largest logit.
                    let mut sorted = v.clone();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    let kth = sorted[k.min(v.len()) - 1];
                    prop_assert!(v[id] >= kth, "logit {} below the top-{} bound {}", v[id], k, kth);
                }
            }
        }
    }

    #[test]
    fn class_probabilities_are_a_distribution_or_a_typed_error(v in logits()) {
        match (class_probs(&v), expected_problem(&v)) {
            (Err(e), Some(want)) => prop_assert_eq!(kind(&e), want),
            (Err(e), None) => prop_assert!(false, "refused good logits {:?}: {}", v, e),
            (Ok(p), Some(want)) => prop_assert!(false, "{:?} from {} logits {:?}", p, want, v),
            (Ok(p), None) => {
                prop_assert_eq!(p.len(), v.len());
                prop_assert!(p.iter().all(|q| q.is_finite() && (0.0..=1.0).contains(q)), "{:?}", p);
                let total: f64 = p.iter().map(|&q| q as f64).sum();
                prop_assert!((total - 1.0).abs() < 1e-5, "sum {}", total);
                // The largest logit has the largest probability; -inf has none.
                let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let best = v.iter().position(|&x| x == max).unwrap_or(0);
                prop_assert!(p.iter().all(|&q| q <= p[best]));
                for (x, q) in v.iter().zip(&p) {
                    if *x == f32::NEG_INFINITY {
                        prop_assert_eq!(*q, 0.0);
                    }
                }
            }
        }
    }
}

#[test]
fn all_equal_logits_are_uniform() {
    let p = class_probs(&[3.5; 4]).unwrap();
    assert_eq!(p, [0.25; 4]);
    let p = class_probs(&[f32::MAX, f32::MAX]).unwrap();
    assert_eq!(p, [0.5, 0.5]);
    // Sampling: each of 4 equal tokens about a quarter of the time (2000 draws: 500 ± 100).
    let opts = GenerateOptions {
        temperature: Some(1.0),
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut counts = [0usize; 4];
    for _ in 0..2000 {
        counts[pick(&[-7.0; 4], &opts, &mut rng).unwrap() as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (400..=600).contains(&c)),
        "{counts:?}"
    );
    // Greedy takes the first.
    let greedy = GenerateOptions::default();
    assert_eq!(pick(&[2.0; 5], &greedy, &mut rng), Ok(0));
}

#[test]
fn infinities_have_a_defined_meaning() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let sample = GenerateOptions {
        temperature: Some(1.0),
        top_k: Some(3),
        ..Default::default()
    };
    // -inf masks a token: only the finite one can come out.
    let masked = [f32::NEG_INFINITY, 0.5, f32::NEG_INFINITY];
    for _ in 0..100 {
        assert_eq!(pick(&masked, &sample, &mut rng), Ok(1));
    }
    assert_eq!(class_probs(&masked).unwrap(), [0.0, 1.0, 0.0]);
    // +inf is an overflow in the model: refused, named with its position.
    let e = pick(&[0.0, f32::INFINITY], &sample, &mut rng).unwrap_err();
    assert_eq!(e.to_string(), "an infinite logit (+inf at id 1 of 2)");
    let e = pick(&[f32::NEG_INFINITY; 3], &sample, &mut rng).unwrap_err();
    assert_eq!(
        e.to_string(),
        "only -inf logits (3 of them): no token can be chosen"
    );
    let e = class_probs(&[1.0, f32::NAN, f32::NAN]).unwrap_err();
    assert_eq!(e.to_string(), "NaN logits (2 of 3, the first at id 1)");
}
