//! The book's word tokenizer on The Verdict, and BPE training.
use scratchllm_testutil::shared_text;
use scratchllm_tokenizer::{
    split_words, train, SimpleTokenizer, SpecialMode, TrainOptions, WordCounts,
};

#[test]
fn word_tokenizer_reproduces_the_books_counts() {
    let Some(text) = shared_text("data/the-verdict.txt") else {
        return;
    };
    // Chapter 2: 4,690 tokens, 1,130 distinct words, 1,132 entries with the two special tokens.
    assert_eq!(split_words(&text).len(), 4690);
    let tok = SimpleTokenizer::from_text(&text);
    assert_eq!(tok.vocab_size(), 1132);
    let sample = "\"It's the last he painted, you know,\" Mrs. Gisburn said with pardonable pride.";
    let ids = tok.encode(sample);
    assert_eq!(
        ids,
        [
            1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793,
            7
        ]
    );
    // The book's output: the regex puts back punctuation but not the space after an opening quote.
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "\" It' s the last he painted, you know,\" Mrs. Gisburn said with pardonable pride."
    );
    let unk =
        tok.encode("Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace.");
    assert_eq!(
        tok.decode(&unk).unwrap(),
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    );
}

fn train_verdict(text: &str, vocab_size: usize) -> scratchllm_tokenizer::Tokenizer {
    let specials = vec!["<|endoftext|>".to_string()];
    let mut counts = WordCounts::new(&specials);
    counts.add_text(text);
    train(
        &counts,
        &TrainOptions {
            vocab_size,
            specials,
            min_frequency: 0,
        },
        &mut |_, _| {},
    )
    .unwrap()
}

#[test]
fn training_is_deterministic_and_compresses() {
    let Some(text) = shared_text("data/the-verdict.txt") else {
        return;
    };
    let a = train_verdict(&text, 1000);
    let b = train_verdict(&text, 1000);
    assert_eq!(a.vocab_size(), 1000);
    assert_eq!(a.special_id("<|endoftext|>"), Some(999));
    assert_eq!(a.merge_list(), b.merge_list());
    // The first merges are the commonest pairs of English: " t", "he", " a", "in" in some order.
    let first: Vec<String> = a.merge_list()[..4]
        .iter()
        .map(|&(l, r)| {
            String::from_utf8_lossy(
                &[a.token_bytes(l).unwrap(), a.token_bytes(r).unwrap()].concat(),
            )
            .into_owned()
        })
        .collect();
    assert!(
        first.contains(&" t".to_string()) && first.contains(&"he".to_string()),
        "{first:?}"
    );
    let ids = a.encode(&text, SpecialMode::Forbid).unwrap();
    assert_eq!(a.decode(&ids).unwrap(), text);
    // How well it compresses is compared with Hugging Face's trainer in tests/reference.rs.
}

#[test]
fn streaming_a_file_counts_the_same_words_as_the_whole_text() {
    let Some(text) = shared_text("data/the-verdict.txt") else {
        return;
    };
    // Repeat the text past the 1 MiB chunk so the chunk seams fall in many places.
    let big = format!("{text}<|endoftext|>\n  \n").repeat(60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.txt");
    std::fs::write(&path, &big).unwrap();
    let specials = vec!["<|endoftext|>".to_string()];
    let mut streamed = WordCounts::new(&specials);
    let mut seen = 0;
    streamed.add_file(&path, &mut |n| seen += n).unwrap();
    assert_eq!(seen, big.len() as u64);
    let mut whole = WordCounts::new(&specials);
    whole.add_text(&big);
    let opts = TrainOptions {
        vocab_size: 600,
        specials,
        min_frequency: 0,
    };
    let a = train(&streamed, &opts, &mut |_, _| {}).unwrap();
    let b = train(&whole, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(a.merge_list(), b.merge_list());
}

#[test]
fn training_rejects_impossible_settings_and_bad_files() {
    let counts = WordCounts::new(&[]);
    let err = train(
        &counts,
        &TrainOptions {
            vocab_size: 100,
            specials: vec![],
            min_frequency: 0,
        },
        &mut |_, _| {},
    );
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("below the 256 byte tokens"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.txt");
    std::fs::write(&path, b"caf\xe9 au lait").unwrap();
    let err = WordCounts::new(&[])
        .add_file(&path, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.txt") && err.contains("byte 3"),
        "{err}"
    );
}
