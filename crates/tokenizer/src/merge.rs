//! Applying BPE merges to one pre-tokenized piece.
//!
//! The rule is tiktoken's and Hugging Face's: repeatedly merge the adjacent pair with the lowest
//! priority, the leftmost one on ties, until no adjacent pair has a merge. Short pieces (nearly all of
//! them) use a flat array scan like tiktoken's `byte_pair_merge`, which is quadratic but tiny; long
//! pieces use a heap over a linked list, O(n log n), so a 100,000-character word stays fast.
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Pair key: left id in the high half, right id in the low half.
#[inline]
pub fn pair_key(left: u32, right: u32) -> u64 {
    ((left as u64) << 32) | right as u64
}

/// `(priority, merged id)` for each mergeable pair of token ids.
pub type MergeTable = FxHashMap<u64, (u32, u32)>;

/// Pieces longer than this (in tokens at the start, i.e. bytes) take the heap path.
const FLAT_LIMIT: usize = 256;

/// Merges `parts` (initially one id per byte) in place.
pub fn merge(parts: &mut Vec<u32>, merges: &MergeTable) {
    if parts.len() <= FLAT_LIMIT {
        merge_flat(parts, merges);
    } else {
        merge_heap(parts, merges);
    }
}

#[inline]
fn priority(merges: &MergeTable, left: u32, right: u32) -> (u32, u32) {
    merges
        .get(&pair_key(left, right))
        .copied()
        .unwrap_or((u32::MAX, u32::MAX))
}

/// The plain algorithm: keep the priority of every adjacent pair, merge the best, update two.
pub fn merge_flat(parts: &mut Vec<u32>, merges: &MergeTable) {
    if parts.len() < 2 {
        return;
    }
    let mut prio: Vec<(u32, u32)> = parts
        .windows(2)
        .map(|w| priority(merges, w[0], w[1]))
        .collect();
    loop {
        let mut best = u32::MAX;
        let mut at = usize::MAX;
        for (i, &(p, _)) in prio.iter().enumerate() {
            if p < best {
                best = p;
                at = i;
            }
        }
        if best == u32::MAX {
            return;
        }
        parts[at] = prio[at].1;
        parts.remove(at + 1);
        prio.remove(at);
        if at + 1 < parts.len() {
            prio[at] = priority(merges, parts[at], parts[at + 1]);
        }
        if at > 0 {
            prio[at - 1] = priority(merges, parts[at - 1], parts[at]);
        }
    }
}

/// The same result in O(n log n): a doubly linked list of parts and a heap of candidate pairs.
/// A heap entry is stale when either of its two parts has changed since it was pushed.
pub fn merge_heap(parts: &mut Vec<u32>, merges: &MergeTable) {
    let n = parts.len();
    if n < 2 {
        return;
    }
    const NONE: usize = usize::MAX;
    let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NONE;
    // Bumped each time a part changes, so stale heap entries can be recognised.
    let mut version = vec![0u32; n];
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<_>, parts: &[u32], version: &[u32], l: usize, r: usize| {
        let (p, id) = priority(merges, parts[l], parts[r]);
        if p != u32::MAX {
            heap.push(Reverse((p, l, version[l], r, version[r], id)));
        }
    };
    for i in 0..n - 1 {
        push(&mut heap, parts, &version, i, i + 1);
    }
    while let Some(Reverse((_, l, vl, r, vr, id))) = heap.pop() {
        if !alive[l] || !alive[r] || version[l] != vl || version[r] != vr || next[l] != r {
            continue;
        }
        parts[l] = id;
        version[l] += 1;
        alive[r] = false;
        next[l] = next[r];
        if next[r] != NONE {
            prev[next[r]] = l;
            push(&mut heap, parts, &version, l, next[l]);
        }
        if prev[l] != NONE {
            push(&mut heap, parts, &version, prev[l], l);
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i != NONE {
        out.push(parts[i]);
        i = next[i];
    }
    *parts = out;
}
