//! The command line's parser and settings checks (`scratchllm::check_args`, also the `cli_args`
//! fuzz target) answer any mix of training flags and values with an error or a configuration,
//! never a panic; and the issue's absurd settings are refused by name.
use proptest::prelude::*;

const FLAGS: &[&str] = &[
    "--lr",
    "--min-lr",
    "--warmup-start-lr",
    "--weight-decay",
    "--grad-clip",
    "--epochs",
    "--batch-size",
    "--grad-accum",
    "--max-steps",
    "--eval-every",
    "--eval-batches",
    "--keep-checkpoints",
    "--checkpoint-every",
    "--stride",
    "--context-length",
    "--drop-rate",
    "--lora-rank",
    "--lora-alpha",
    "--lora-targets",
    "--split",
    "--beta",
    "--trainable",
    "--prompt-style",
    "--model-config",
    "--seed",
    "--lora",
    "--merge",
    "--resume",
];
const VALUES: &[&str] = &[
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e30",
    "-1",
    "0",
    "1",
    "0.5",
    "18446744073709551615",
    "100000",
    "",
    "attention,ff",
    "lora",
    "all",
    "phi3",
    "/dev/zero",
    "0.7,0.1",
    "1,2,3",
    "x",
];

fn command() -> impl Strategy<Value = Vec<String>> {
    let head = prop_oneof![
        Just(vec!["pretrain", "--model", "gpt2-tiny"]),
        Just(vec!["finetune", "classify", "--model", "gpt2-tiny"]),
        Just(vec!["finetune", "instruct", "--model", "gpt2-tiny"]),
        Just(vec!["finetune", "dpo", "--model", "gpt2-tiny"]),
    ];
    let pair = (0..FLAGS.len(), 0..VALUES.len());
    (head, prop::collection::vec(pair, 0..6)).prop_map(|(head, pairs)| {
        let mut args: Vec<String> = std::iter::once("scratchllm")
            .chain(head)
            .chain(["--data", "data.txt", "--out", "run"])
            .map(String::from)
            .collect();
        for (f, v) in pairs {
            args.push(format!("{}={}", FLAGS[f], VALUES[v]));
        }
        args
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn any_training_flags_give_an_answer_not_a_panic(args in command()) {
        let _ = scratchllm::check_args(&args);
    }
}

#[test]
fn absurd_settings_are_named() {
    let check = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "scratchllm",
            "pretrain",
            "--model",
            "gpt2-tiny",
            "--data",
            "d.txt",
            "--out",
            "r",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        args.dedup();
        scratchllm::check_args(&args).unwrap_err()
    };
    assert!(check(&["--lr", "nan"]).contains("--lr NaN"));
    assert!(check(&["--lr=-1"]).contains("--lr -1"));
    assert!(check(&["--grad-clip", "inf"]).contains("--grad-clip inf"));
    assert!(check(&["--model-config", "/dev/zero"])
        .contains("expected a JSON model configuration file"));
    let ok = [
        "scratchllm",
        "pretrain",
        "--model",
        "gpt2-tiny",
        "--data",
        "d.txt",
        "--out",
        "r",
    ];
    let ok: Vec<String> = ok.iter().map(|s| s.to_string()).collect();
    assert_eq!(scratchllm::check_args(&ok), Ok(()));
}
