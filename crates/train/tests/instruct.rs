//! Instruction fine-tuning: the book's collate golden, entry checking, the split sizes on the
//! book's data, and a tiny end-to-end run whose loss falls.
use scratchllm_model::{GptConfig, PromptStyle};
use scratchllm_testutil::shared;
use scratchllm_train::instruct::{
    collate, finetune_instruct, read_entries, split, tokenize, InstructConfig, Tokenized,
};
use scratchllm_train::{Ending, EvalRecord, Observer, StepRecord};
use std::path::Path;

#[test]
fn collate_matches_the_books_example() {
    // Chapter 7: inputs [[0,1,2,3,4],[5,6],[7,8,9]] with pad 50256.
    let items: Vec<Tokenized> = [vec![0, 1, 2, 3, 4], vec![5, 6], vec![7, 8, 9]]
        .into_iter()
        .map(|ids| Tokenized { ids, prompt_len: 0 })
        .collect();
    let refs: Vec<&Tokenized> = items.iter().collect();
    let (x, y) = collate(&refs, 50256, false, None);
    let p = 50256;
    assert_eq!(
        x,
        vec![
            vec![0, 1, 2, 3, 4],
            vec![5, 6, p, p, p],
            vec![7, 8, 9, p, p]
        ]
    );
    let p = 50256i64;
    assert_eq!(
        y,
        vec![
            vec![1, 2, 3, 4, p],
            vec![6, p, -100, -100, -100],
            vec![8, 9, p, -100, -100]
        ]
    );
    // Masking the prompt (exercise 7.2): with a 2-token prompt, the target predicting token 1 goes.
    let masked: Vec<Tokenized> = items
        .iter()
        .map(|t| Tokenized {
            prompt_len: 2,
            ..t.clone()
        })
        .collect();
    let refs: Vec<&Tokenized> = masked.iter().collect();
    let (_, y) = collate(&refs, 50256, true, Some(3));
    assert_eq!(
        y,
        vec![vec![-100, 2, 3], vec![-100, p, -100], vec![-100, 9, p]]
    );
}

#[test]
fn a_pad_id_inside_the_prompt_is_not_the_padding() {
    // Qwen3's template closes the user's turn with <|im_end|> (151645), also its eos and so the
    // pad: the response's own end must stay a target, and only the padding after it is ignored.
    let (im_end, p) = (151645u32, 151645i64);
    let items = [
        Tokenized {
            ids: vec![1, 2, im_end, 3, 4],
            prompt_len: 4,
        },
        Tokenized {
            ids: vec![1, im_end, 5],
            prompt_len: 2,
        },
    ];
    let refs: Vec<&Tokenized> = items.iter().collect();
    let (x, y) = collate(&refs, im_end, true, None);
    assert_eq!(x[1], vec![1, im_end, 5, im_end, im_end]);
    assert_eq!(
        y,
        vec![vec![-100, -100, -100, 4, p], vec![-100, 5, p, -100, -100]]
    );
    let (_, y) = collate(&refs, im_end, false, None);
    assert_eq!(y, vec![vec![2, p, 3, 4, p], vec![p, 5, p, -100, -100]]);
}

#[test]
fn entries_are_checked_and_named_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.json");
    let check = |text: &str| -> String {
        std::fs::write(&p, text).unwrap();
        read_entries(&p, &["chosen"]).unwrap_err().to_string()
    };
    assert!(check("{").contains("not valid JSON"));
    assert!(check("{}").contains("expected a JSON list"));
    assert!(check("[]").contains("empty"));
    let e = check(
        r#"[{"instruction": "a", "output": "b", "chosen": "c"}, {"instruction": "a", "output": 3, "chosen": "c"}]"#,
    );
    assert!(
        e.contains("entry 1: \"output\" must be a string, not 3"),
        "{e}"
    );
    let e = check(r#"[{"instruction": "a", "output": "b"}]"#);
    assert!(e.contains("entry 0 has no \"chosen\""), "{e}");
    let e = check(r#"[{"instruction": " ", "output": "b", "chosen": "c"}]"#);
    assert!(e.contains("entry 0: the instruction is empty"), "{e}");
    let e = check(r#"[7]"#);
    assert!(e.contains("entry 0 is not an object"), "{e}");
    std::fs::write(
        &p,
        r#"[{"instruction": "a", "output": "b", "chosen": "c", "id": 5}]"#,
    )
    .unwrap();
    let ok = read_entries(&p, &["chosen"]).unwrap();
    assert_eq!(ok[0].input, "", "a missing input is empty");
    assert_eq!(ok[0].to_json()["id"], 5, "other fields are kept");
}

#[test]
fn the_books_data_splits_and_tokenizes_as_the_book() {
    let Some(path) = shared("data/instruction-data.json") else {
        return;
    };
    let entries = read_entries(&path, &[]).unwrap();
    assert_eq!(entries.len(), 1100);
    let (train, test, val) = split(entries, 0.85, 0.1, None);
    assert_eq!((train.len(), test.len(), val.len()), (935, 110, 55));
    let tok = scratchllm_tokenizer::gpt2().unwrap();
    let t = tokenize(&train[0], PromptStyle::Alpaca, &tok).unwrap();
    let text = tok.decode(&t.ids).unwrap();
    assert!(text.starts_with("Below is an instruction that describes a task."));
    assert!(text.ends_with(&format!("### Response:\n{}", train[0].output)));
    assert_eq!(
        tok.decode(&t.ids[..t.prompt_len]).unwrap(),
        PromptStyle::Alpaca.instruction(&train[0].instruction, &train[0].input)
    );
}

#[derive(Default)]
struct Log {
    evals: Vec<EvalRecord>,
}

impl Observer for Log {
    fn start(&mut self, _: usize, _: usize, _: usize, _: usize) {}
    fn step(&mut self, _: &StepRecord) {}
    fn eval(&mut self, r: &EvalRecord) {
        self.evals.push(r.clone());
    }
    fn sample(&mut self, _: usize, _: &str) {}
    fn checkpoint(&mut self, _: &Path) {}
    fn stop_requested(&self) -> bool {
        false
    }
}

#[test]
fn a_tiny_model_learns_instructions_and_writes_responses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    let entries: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            let word = ["cat", "dog", "sun", "tree"][i % 4];
            serde_json::json!({"instruction": "Repeat the word.", "input": word, "output": word})
        })
        .collect();
    // A test prompt longer than the context: its response fails alone, with the reason.
    let mut entries = entries;
    entries[35]["input"] = serde_json::json!("word ".repeat(80));
    std::fs::write(&data, serde_json::to_string(&entries).unwrap()).unwrap();
    let mut cfg = InstructConfig::book("unused", &data);
    cfg.tune.model_config = Some(GptConfig {
        vocab_size: 50257,
        context_length: 64,
        emb_dim: 32,
        n_heads: 2,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: false,
        tie_embeddings: false,
        num_classes: None,
        ..Default::default()
    });
    cfg.optim.lr = 5e-3;
    cfg.optim.epochs = 8;
    cfg.run.eval_every = 8;
    cfg.run.eval_batches = None;
    cfg.response_tokens = 4;
    let run = dir.path().join("run");
    let mut log = Log::default();
    let (ending, results) = finetune_instruct(&run, Some(cfg), &mut log).unwrap();
    assert!(matches!(ending, Ending::Finished { .. }));
    let results = results.unwrap();
    assert_eq!(
        (
            results.train_examples,
            results.test_examples,
            results.val_examples
        ),
        (34, 4, 2)
    );
    let (first, last) = (&log.evals[0], log.evals.last().unwrap());
    assert!(
        last.train_loss < 0.5 * first.train_loss,
        "{first:?} -> {last:?}"
    );
    assert!(
        results.test_perplexity.is_finite() && results.test_perplexity < 100.0,
        "{results:?}"
    );
    let responses: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(run.join("test-responses.json")).unwrap())
            .unwrap();
    assert_eq!(responses.len(), 4);
    assert!(responses
        .iter()
        .all(|r| r["model_response"].is_string() && r["output"].is_string()));
    let e = responses[1]["error"].as_str().unwrap();
    assert!(e.contains("leaves no room in the context of 64"), "{e}");
    assert!(responses[0].get("error").is_none());
    // The model directory remembers its prompt style.
    let files =
        scratchllm_model::modeldir::load(&run.join("model"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(files.prompt_style, Some(PromptStyle::Alpaca));
}
