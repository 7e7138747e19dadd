//! Long pieces: near-linear time and memory a small multiple of the text, with ids identical to
//! the plain merge ([`crate::merge::merge_heap`]).
//!
//! Two facts make this exact:
//! 1. *Junctions.* A merge of `a` and `b` joins the last unit (byte or character) of `a` to the first
//!    of `b`. If no merge in the table joins units `x` and `y`, no token can ever span a place where
//!    `x` is followed by `y`: the text can be cut there and each part merged on its own. Gemma's
//!    vocabulary, for instance, never joins a letter to a following `▁`, so its one-piece paragraphs
//!    fall apart into words; GPT-2's never joins `a` to `{`.
//! 2. *Runs.* What is left is merged over runs of equal tokens (`aaaa…` is one node with a count).
//!    When the lowest pair is `(x, x)` inside a run, leftmost-first merging pairs the whole run at
//!    once, unless a pair that the merge creates (`(xx, x)`, `(xx, xx)`, `(left, xx)`) ranks lower, in
//!    which case one pair is merged and the rest waits, exactly as the plain loop would. Fifty
//!    megabytes of one letter are then a few dozen steps instead of fifty million.
use crate::merge::{pair_key, MergeTable};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Which unit pairs some merge joins (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Junctions {
    /// Byte pairs, as a 65,536-bit table, for byte-level vocabularies.
    bytes: Vec<u64>,
    /// Character pairs (`last << 32 | first`), for character-level ones.
    chars: FxHashSet<u64>,
}

impl Junctions {
    /// The junctions of a byte-level table, given every token's bytes.
    pub fn of_bytes(merges: &MergeTable, vocab: &[Vec<u8>]) -> Self {
        let mut bytes = vec![0u64; 1024];
        for &key in merges.keys() {
            let (a, b) = ((key >> 32) as usize, (key & 0xFFFF_FFFF) as usize);
            if let (Some(&last), Some(&first)) = (
                vocab.get(a).and_then(|t| t.last()),
                vocab.get(b).and_then(|t| t.first()),
            ) {
                let bit = ((last as usize) << 8) | first as usize;
                bytes[bit >> 6] |= 1 << (bit & 63);
            }
        }
        Junctions {
            bytes,
            chars: FxHashSet::default(),
        }
    }

    /// The junctions of a character-level table, given every token's text.
    pub fn of_chars(merges: &MergeTable, tokens: &[String]) -> Self {
        let mut chars = FxHashSet::default();
        for &key in merges.keys() {
            let (a, b) = ((key >> 32) as usize, (key & 0xFFFF_FFFF) as usize);
            if let (Some(last), Some(first)) = (
                tokens.get(a).and_then(|t| t.chars().last()),
                tokens.get(b).and_then(|t| t.chars().next()),
            ) {
                chars.insert(char_pair(last, first));
            }
        }
        Junctions {
            bytes: Vec::new(),
            chars,
        }
    }

    /// Whether some merge joins byte `x` to a following byte `y`.
    #[inline]
    pub fn bytes_join(&self, x: u8, y: u8) -> bool {
        let bit = ((x as usize) << 8) | y as usize;
        self.bytes
            .get(bit >> 6)
            .is_none_or(|w| w & (1 << (bit & 63)) != 0)
    }

    /// Whether some merge joins character `x` to a following character `y`.
    #[inline]
    pub fn chars_join(&self, x: char, y: char) -> bool {
        self.chars.contains(&char_pair(x, y))
    }
}

#[inline]
fn char_pair(last: char, first: char) -> u64 {
    ((last as u64) << 32) | first as u64
}

/// The places where a byte string can be cut (see [`Junctions`]): calls `segment(start, end)` for
/// consecutive parts that together cover `s`.
pub fn byte_segments(s: &[u8], junctions: &Junctions, mut segment: impl FnMut(usize, usize)) {
    let mut start = 0;
    for i in 1..s.len() {
        if !junctions.bytes_join(s[i - 1], s[i]) {
            segment(start, i);
            start = i;
        }
    }
    if start < s.len() {
        segment(start, s.len());
    }
}

/// A run of equal tokens: `count` of token `tok`, each `width` bytes of text, the first at `start`.
#[derive(Clone, Copy, Debug)]
struct Node {
    tok: u32,
    count: u32,
    width: u32,
    start: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;
/// High bit of an event's node: a pair inside the run rather than with the next run.
const INSIDE: u32 = 1 << 31;

/// BPE over runs; the result is appended to `out`. `symbols` yields `(token, width)` in order.
pub fn merge_runs(
    symbols: impl IntoIterator<Item = (u32, u32)>,
    merges: &MergeTable,
    out: &mut Vec<u32>,
) {
    let mut runs = Runs::new(symbols, merges);
    runs.run();
    runs.emit(out);
}

struct Runs<'m> {
    nodes: Vec<Node>,
    merges: &'m MergeTable,
    queue: Queue,
}

/// Pending pairs, lowest `(rank, position)` first. A binary heap over millions of pairs spends its
/// time in cache misses; here each rank has a bucket whose pairs mostly arrive left to right (the
/// first ones in one sweep, later ones near the merge that made them), kept in order in a deque,
/// with a small heap for the few that arrive out of order.
#[derive(Default)]
struct Queue {
    ranks: BinaryHeap<Reverse<u32>>,
    buckets: FxHashMap<u32, Bucket>,
}

#[derive(Default)]
struct Bucket {
    sorted: VecDeque<(u32, u32)>,
    late: BinaryHeap<Reverse<(u32, u32)>>,
}

impl Queue {
    /// Queues the pair at `pos` of node `tagged` (`node | INSIDE?`).
    fn push(&mut self, rank: u32, pos: u32, tagged: u32) {
        let bucket = self.buckets.entry(rank).or_insert_with(|| {
            self.ranks.push(Reverse(rank));
            Bucket::default()
        });
        match bucket.sorted.back() {
            Some(&last) if last > (pos, tagged) => bucket.late.push(Reverse((pos, tagged))),
            _ => bucket.sorted.push_back((pos, tagged)),
        }
    }

    /// The lowest pending pair: `(rank, position, node | INSIDE?)`.
    fn pop(&mut self) -> Option<(u32, u32, u32)> {
        loop {
            let &Reverse(rank) = self.ranks.peek()?;
            let Some(b) = self.buckets.get_mut(&rank) else {
                self.ranks.pop();
                continue;
            };
            let next = match (b.sorted.front(), b.late.peek()) {
                (Some(&s), Some(&Reverse(l))) if l < s => b.late.pop().map(|r| r.0),
                (Some(_), _) => b.sorted.pop_front(),
                (None, Some(_)) => b.late.pop().map(|r| r.0),
                (None, None) => None,
            };
            if b.sorted.is_empty() && b.late.is_empty() {
                self.buckets.remove(&rank);
                self.ranks.pop();
            }
            if let Some((pos, tagged)) = next {
                return Some((rank, pos, tagged));
            }
        }
    }
}

impl<'m> Runs<'m> {
    fn new(symbols: impl IntoIterator<Item = (u32, u32)>, merges: &'m MergeTable) -> Self {
        let mut nodes: Vec<Node> = Vec::new();
        let mut at = 0u32;
        for (tok, width) in symbols {
            match nodes.last_mut() {
                Some(last) if last.tok == tok && last.width == width => last.count += 1,
                _ => {
                    let k = nodes.len() as u32;
                    let prev = if k == 0 { NONE } else { k - 1 };
                    if let Some(last) = nodes.last_mut() {
                        last.next = k;
                    }
                    nodes.push(Node {
                        tok,
                        count: 1,
                        width,
                        start: at,
                        prev,
                        next: NONE,
                    });
                }
            }
            at = at.saturating_add(width);
        }
        let mut runs = Runs {
            nodes,
            merges,
            queue: Queue::default(),
        };
        for i in 0..runs.nodes.len() as u32 {
            runs.push_inside(i);
            runs.push_after(i);
        }
        runs
    }

    fn rank(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(a, b)).copied()
    }

    fn last_start(&self, i: u32) -> u32 {
        let n = &self.nodes[i as usize];
        n.start + (n.count - 1) * n.width
    }

    /// Queues the pair inside run `i`, if it has one that merges.
    fn push_inside(&mut self, i: u32) {
        let n = self.nodes[i as usize];
        if n.count >= 2 {
            if let Some((rank, _)) = self.rank(n.tok, n.tok) {
                self.queue.push(rank, n.start, i | INSIDE);
            }
        }
    }

    /// Queues the pair between run `i` and the next, if it merges.
    fn push_after(&mut self, i: u32) {
        if i == NONE {
            return;
        }
        let n = self.nodes[i as usize];
        if n.next == NONE {
            return;
        }
        if let Some((rank, _)) = self.rank(n.tok, self.nodes[n.next as usize].tok) {
            self.queue.push(rank, self.last_start(i), i);
        }
    }

    fn run(&mut self) {
        while let Some((rank, pos, tagged)) = self.queue.pop() {
            let i = tagged & !INSIDE;
            let n = self.nodes[i as usize];
            if n.count == 0 {
                continue;
            }
            if tagged & INSIDE != 0 {
                let current = self.rank(n.tok, n.tok).map(|r| r.0);
                if n.count >= 2 && n.start == pos && current == Some(rank) {
                    self.merge_inside(i, rank);
                }
            } else if n.next != NONE && self.last_start(i) == pos {
                let next_tok = self.nodes[n.next as usize].tok;
                if self.rank(n.tok, next_tok).map(|r| r.0) == Some(rank) {
                    self.merge_after(i);
                }
            }
        }
    }

    /// Whether pair `(a, b)` ranks after `rank` (or does not merge at all).
    fn later(&self, a: u32, b: u32, rank: u32) -> bool {
        self.rank(a, b).is_none_or(|(r, _)| r > rank)
    }

    /// The lowest pair is inside run `i`: pair the whole run, or one pair when that is not safe.
    fn merge_inside(&mut self, i: u32, rank: u32) {
        let n = self.nodes[i as usize];
        let Some((_, y)) = self.rank(n.tok, n.tok) else {
            return;
        };
        let left_ok = n.prev == NONE || self.later(self.nodes[n.prev as usize].tok, y, rank);
        let whole = left_ok
            && (n.count < 3 || self.later(y, n.tok, rank))
            && (n.count < 4 || self.later(y, y, rank));
        let pairs = if whole { n.count / 2 } else { 1 };
        let rest = n.count - 2 * pairs;
        let node = &mut self.nodes[i as usize];
        node.tok = y;
        node.count = pairs;
        node.width = 2 * n.width;
        if rest > 0 {
            let start = n.start + 2 * pairs * n.width;
            let k = self.insert_after(i, n.tok, rest, n.width, start);
            self.push_inside(k);
            self.push_after(k);
        }
        self.requeue_around(i);
    }

    /// The lowest pair is the last of run `i` and the first of the next run. A side holding one
    /// token becomes the merged token in place, so the common case allocates nothing.
    fn merge_after(&mut self, i: u32) {
        let n = self.nodes[i as usize];
        let j = n.next;
        let m = self.nodes[j as usize];
        let Some((_, z)) = self.rank(n.tok, m.tok) else {
            return;
        };
        let start = self.last_start(i);
        let width = n.width + m.width;
        let merged = if n.count == 1 {
            let left = &mut self.nodes[i as usize];
            left.tok = z;
            left.width = width;
            self.take_first(j);
            i
        } else if m.count == 1 {
            self.nodes[i as usize].count -= 1;
            let right = &mut self.nodes[j as usize];
            right.tok = z;
            right.width = width;
            right.start = start;
            j
        } else {
            self.nodes[i as usize].count -= 1;
            self.take_first(j);
            self.insert_after(i, z, 1, width, start)
        };
        self.requeue_around(merged);
    }

    /// Run `j` gives up its first token (to a merge with the run before it).
    fn take_first(&mut self, j: u32) {
        let right = &mut self.nodes[j as usize];
        right.count -= 1;
        right.start += right.width;
        if right.count == 0 {
            self.unlink(j);
        } else {
            self.push_inside(j);
        }
    }

    /// Queues the pairs that changed when run `i` did: inside it and with both neighbours.
    fn requeue_around(&mut self, i: u32) {
        self.push_inside(i);
        self.push_after(self.nodes[i as usize].prev);
        self.push_after(i);
    }

    fn insert_after(&mut self, i: u32, tok: u32, count: u32, width: u32, start: u32) -> u32 {
        let k = self.nodes.len() as u32;
        let next = self.nodes[i as usize].next;
        self.nodes.push(Node {
            tok,
            count,
            width,
            start,
            prev: i,
            next,
        });
        self.nodes[i as usize].next = k;
        if next != NONE {
            self.nodes[next as usize].prev = k;
        }
        k
    }

    fn unlink(&mut self, k: u32) {
        let Node { prev, next, .. } = self.nodes[k as usize];
        if prev != NONE {
            self.nodes[prev as usize].next = next;
        }
        if next != NONE {
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[k as usize].count = 0;
    }

    fn emit(&self, out: &mut Vec<u32>) {
        let Some(mut i) = self
            .nodes
            .iter()
            .position(|n| n.count > 0 && n.prev == NONE)
        else {
            return;
        };
        while i != NONE as usize {
            let n = &self.nodes[i];
            out.extend(std::iter::repeat_n(n.tok, n.count as usize));
            i = n.next as usize;
        }
    }
}
