//! Long pieces (issue: 50 MB of one letter took 51 s and 3 GB): the long path (junction cuts,
//! merging over runs) gives the ids of the plain heap merge, and stays within a few times the input
//! in memory. This binary counts its allocations to measure the peak.
use proptest::prelude::*;
use scratchllm_tokenizer::long::merge_runs;
use scratchllm_tokenizer::merge::{merge_heap, pair_key, MergeTable};
use scratchllm_tokenizer::{gpt2_shared, pretokenize::pieces};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The allocation counters are global: the tests of this file take turns, so that the memory
/// test counts only its own allocations.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The plain path: every GPT-2 piece merged by the reference heap merge.
fn reference_ids(text: &str) -> Vec<u32> {
    let tok = gpt2_shared().unwrap();
    let mut out = Vec::new();
    for p in pieces(text) {
        let mut parts: Vec<u32> = p.bytes().map(|b| tok.byte_token(b)).collect();
        merge_heap(&mut parts, tok.merge_table());
        out.extend(parts);
    }
    out
}

#[test]
fn megabytes_of_one_letter_match_the_plain_merge_in_little_memory() {
    let _serial = serial();
    let tok = gpt2_shared().unwrap();
    for text in [
        "a".repeat(4 << 20),
        "=".repeat(1 << 20),
        " ".repeat(1 << 20),
    ] {
        let before = LIVE.load(Relaxed);
        PEAK.store(before, Relaxed);
        let ids = tok.encode_ordinary(&text);
        let peak = PEAK.load(Relaxed) - before;
        // Beside the ids (4 bytes each, in a buffer that starts at 4/3 of the text and grows by
        // doubling) the merge
        // needs almost nothing; the old heap merge held about 60 bytes per byte of text.
        let ids_bytes = 4 * ids.len();
        assert!(
            peak < 2 * text.len() + 3 * ids_bytes,
            "{} bytes of {:?} ({} ids): peak {peak} bytes",
            text.len(),
            &text[..2],
            ids.len()
        );
        assert_eq!(ids, reference_ids(&text), "{:?}", &text[..2]);
    }
}

#[test]
fn long_pieces_without_runs_match_the_plain_merge() {
    let _serial = serial();
    // No run and no junction to cut at: merged over single-token runs (about 50 bytes a byte).
    let tok = gpt2_shared().unwrap();
    let text = "ab".repeat(1 << 18) + &"xyzzy".repeat(20_000);
    assert_eq!(tok.encode_ordinary(&text), reference_ids(&text));
}

/// A random merge table over `alphabet` ids: each merge joins two existing ids into a new one,
/// ranks shuffled so that some tables are not in creation order.
fn table(alphabet: u32, merges: &[(usize, usize)], ranks: &[u32]) -> MergeTable {
    let mut t = MergeTable::default();
    let mut next = alphabet;
    for (k, &(a, b)) in merges.iter().enumerate() {
        let (a, b) = (a as u32 % next, b as u32 % next);
        if t.contains_key(&pair_key(a, b)) {
            continue;
        }
        t.insert(
            pair_key(a, b),
            (ranks[k % ranks.len()] * 64 + k as u32, next),
        );
        next += 1;
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn runs_merge_like_the_plain_heap(
        symbols in prop::collection::vec(0u32..3, 0..400),
        runs in prop::collection::vec((0u32..3, 1usize..60), 0..12),
        merges in prop::collection::vec((0usize..40, 0usize..40), 1..30),
        ranks in prop::collection::vec(0u32..1000, 1..30),
    ) {
        let _serial = serial();
        let t = table(3, &merges, &ranks);
        // Mix random symbols with long runs so both the pairing and the single steps are used.
        let mut seq = symbols;
        for (s, n) in runs {
            seq.extend(std::iter::repeat_n(s, n));
        }
        let mut want = seq.clone();
        merge_heap(&mut want, &t);
        let mut got = Vec::new();
        merge_runs(seq.iter().map(|&s| (s, 1)), &t, &mut got);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn long_gpt2_pieces_match_the_plain_merge(
        parts in prop::collection::vec(prop::sample::select(vec!["a", "aa", "b", "ab", "=", "-", "xyz", "é", "{"]), 100..1500),
    ) {
        let _serial = serial();
        let text: String = parts.concat();
        prop_assert_eq!(gpt2_shared().unwrap().encode_ordinary(&text), reference_ids(&text));
    }
}
