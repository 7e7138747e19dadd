//! Token shards: the ids equal whole-document encoding across chunk seams and shard boundaries, and
//! a run trains from them.
use scratchllm_testutil::shared_text;
use scratchllm_tokenizer::{gpt2, SpecialMode};
use scratchllm_train::shards::{prepare, MappedTokens};

#[test]
fn shards_hold_exactly_the_ids_of_each_document() {
    let Some(verdict) = shared_text("data/the-verdict.txt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Past the 1 MiB chunk, with blank-line runs and specials near seams.
    let big = format!("{verdict}\n\n   \n<|endoftext|>\n").repeat(60);
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, &big).unwrap();
    std::fs::write(&b, "A second document.\n").unwrap();
    let tok = gpt2().unwrap();
    let mut seen = 0;
    let out = dir.path().join("shards");
    let n = prepare(&[a, b], &tok, &out, 100_000, &mut |k| seen += k).unwrap();
    let mut want = tok.encode(&big, SpecialMode::Allow).unwrap();
    want.push(50256);
    want.extend(
        tok.encode("A second document.\n", SpecialMode::Allow)
            .unwrap(),
    );
    assert_eq!(n, want.len());
    assert_eq!(seen as usize, big.len() + 19);
    let mapped = MappedTokens::open(&out).unwrap();
    assert_eq!(mapped.len(), want.len());
    assert!(
        std::fs::read_dir(&out).unwrap().count() > 3,
        "expected several shards"
    );
    let mut got = Vec::new();
    mapped.copy(0, want.len(), &mut got);
    assert_eq!(got, want);
    // A slice across a shard boundary.
    let mut mid = Vec::new();
    mapped.copy(99_990, 20, &mut mid);
    assert_eq!(mid, want[99_990..100_010]);
    // A truncated shard is reported.
    let first = out.join("shard-00000.bin");
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, &bytes[..bytes.len() - 4]).unwrap();
    let e = MappedTokens::open(&out).err().unwrap().to_string();
    assert!(e.contains("shard-00000.bin") && e.contains("bytes"), "{e}");
}
