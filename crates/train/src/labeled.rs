//! Labeled texts for classification: reading TSV and CSV tables (every row checked, errors naming
//! the line), class labels, balancing, the book's seeded split, and tokenization.
use crate::rundir::err;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use scratchllm_model::ModelError;
use scratchllm_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A column of a table: by 0-based index or by header name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    Index(usize),
    Name(String),
}

impl Column {
    /// `"2"` is an index, anything else a name.
    pub fn parse(s: &str) -> Self {
        s.parse()
            .map_or_else(|_| Column::Name(s.to_string()), Column::Index)
    }
}

/// How to read a labeled-text file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableFormat {
    /// Comma-separated with quoting (RFC 4180); otherwise tab-separated without quoting.
    pub csv: bool,
    /// The first row names the columns.
    pub header: bool,
    pub label_column: Column,
    pub text_column: Column,
}

impl TableFormat {
    /// The SMS Spam Collection's format: `label<TAB>text`, no header.
    pub fn tsv() -> Self {
        TableFormat {
            csv: false,
            header: false,
            label_column: Column::Index(0),
            text_column: Column::Index(1),
        }
    }
}

/// One labeled text, with the line it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub label: String,
    pub text: String,
    pub line: usize,
}

fn column_index(col: &Column, header: Option<&[String]>, path: &Path) -> Result<usize> {
    match (col, header) {
        (Column::Index(i), _) => Ok(*i),
        (Column::Name(n), Some(h)) => h.iter().position(|c| c == n).ok_or_else(|| {
            err(
                path,
                format!("line 1: no column {n:?}; the header has {}", h.join(", ")),
            )
        }),
        (Column::Name(n), None) => Err(err(
            path,
            format!("column {n:?} is a name, but the file has no header (use an index, or the header option)"),
        )),
    }
}

/// Reads labeled texts; every row must have the label and text columns, both non-empty.
pub fn read_examples(path: &Path, format: &TableFormat) -> Result<Vec<Example>> {
    let text = scratchllm_tokenizer::io::read_text(path)?;
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    if format.csv {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        for record in reader.records() {
            let record = record.map_err(|e| err(path, format!("not valid CSV: {e}")))?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            rows.push((line, record.iter().map(str::to_string).collect()));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            rows.push((i + 1, line.split('\t').map(str::to_string).collect()));
        }
    }
    let header = if format.header && !rows.is_empty() {
        Some(rows.remove(0).1)
    } else {
        None
    };
    let li = column_index(&format.label_column, header.as_deref(), path)?;
    let ti = column_index(&format.text_column, header.as_deref(), path)?;
    let columns = header.as_ref().map(Vec::len);
    let mut out = Vec::with_capacity(rows.len());
    for (line, mut fields) in rows {
        // In a TSV whose text is the last column, tabs inside the text belong to it.
        if !format.csv && ti + 1 >= columns.unwrap_or(li.max(ti) + 1) && fields.len() > ti + 1 {
            let rest = fields.split_off(ti + 1).join("\t");
            fields[ti].push('\t');
            fields[ti].push_str(&rest);
        }
        let need = li.max(ti) + 1;
        if fields.len() < need || columns.is_some_and(|c| fields.len() != c) {
            return Err(err(
                path,
                format!(
                    "line {line}: {} field(s), expected {}{}",
                    fields.len(),
                    columns.unwrap_or(need),
                    if format.csv {
                        ""
                    } else {
                        " separated by tabs (label<TAB>text)"
                    }
                ),
            ));
        }
        let label = fields[li].trim().to_string();
        let text = fields[ti].clone();
        if label.is_empty() {
            return Err(err(path, format!("line {line}: the label is empty")));
        }
        if text.trim().is_empty() {
            return Err(err(path, format!("line {line}: the text is empty")));
        }
        out.push(Example { label, text, line });
    }
    if out.is_empty() {
        return Err(err(path, "no labeled texts in the file"));
    }
    Ok(out)
}

/// The class names: `given` in its order, or the labels found, sorted (numerically when they are
/// all integers). With `given`, a label outside it is an error naming its line.
pub fn class_labels(
    examples: &[Example],
    given: Option<&[String]>,
    path: &Path,
) -> Result<Vec<String>> {
    if let Some(given) = given {
        if let Some(e) = examples.iter().find(|e| !given.contains(&e.label)) {
            return Err(err(
                path,
                format!(
                    "line {}: unknown label {:?}; the labels are {}",
                    e.line,
                    e.label,
                    given.join(", ")
                ),
            ));
        }
        return Ok(given.to_vec());
    }
    let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().unwrap_or(0));
    }
    Ok(labels)
}

/// The examples of each class of `labels`, in file order (others dropped).
fn by_class(examples: Vec<Example>, labels: &[String]) -> Vec<Vec<Example>> {
    let mut by_class: Vec<Vec<Example>> = vec![Vec::new(); labels.len()];
    for e in examples {
        if let Some(c) = labels.iter().position(|l| *l == e.label) {
            by_class[c].push(e);
        }
    }
    by_class
}

/// `items` at `positions`, in that order.
fn pick<T>(items: Vec<T>, positions: Vec<usize>) -> Vec<T> {
    let mut taken: Vec<Option<T>> = items.into_iter().map(Some).collect();
    positions
        .into_iter()
        .filter_map(|i| taken[i].take())
        .collect()
}

/// Undersamples every class to the size of the smallest (the book's `create_balanced_dataset`),
/// keeping the file order within a class.
pub fn balance(examples: Vec<Example>, labels: &[String], seed: u64) -> Vec<Example> {
    let classes = by_class(examples, labels);
    let n = classes.iter().map(Vec::len).min().unwrap_or(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for class in classes {
        let mut keep: Vec<usize> = (0..class.len()).collect();
        keep.shuffle(&mut rng);
        keep.truncate(n);
        keep.sort_unstable();
        out.extend(pick(class, keep));
    }
    out
}

/// [`balance`] drawing as pandas does in the book's `create_balanced_dataset`: each larger class
/// sampled with `DataFrame.sample(n, random_state=seed)` (in the order drawn), the smallest kept
/// in file order, the classes one after the other.
pub fn balance_like_pandas(examples: Vec<Example>, labels: &[String], seed: u32) -> Vec<Example> {
    let classes = by_class(examples, labels);
    let n = classes.iter().map(Vec::len).min().unwrap_or(0);
    let mut out = Vec::new();
    for class in classes {
        if class.len() > n {
            let picks = crate::pandas_sample::sample(class.len(), n, seed);
            out.extend(pick(class, picks));
        } else {
            out.extend(class);
        }
    }
    out
}

/// [`split`] shuffling as pandas does in the book's `random_split`:
/// `DataFrame.sample(frac=1, random_state=seed)`.
pub fn split_like_pandas(
    examples: Vec<Example>,
    train: f64,
    val: f64,
    seed: u32,
) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let n = examples.len();
    cut(
        pick(examples, crate::pandas_sample::sample(n, n, seed)),
        train,
        val,
    )
}

/// Shuffles with `seed` and splits into train, validation and test by fractions (the book's
/// `random_split`: sizes `int(n * train)`, `int(n * val)`, the rest).
pub fn split(
    mut examples: Vec<Example>,
    train: f64,
    val: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    cut(examples, train, val)
}

/// Train, validation and test in order: `int(n * train)`, `int(n * val)`, the rest.
fn cut(
    mut examples: Vec<Example>,
    train: f64,
    val: f64,
) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let a = ((n as f64 * train) as usize).min(n);
    let b = (a + (n as f64 * val) as usize).min(n);
    let test = examples.split_off(b);
    let val = examples.split_off(a);
    (examples, val, test)
}

/// A tokenized split.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
    /// Texts cut to the maximum length.
    pub truncated: usize,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// Token ids of each example (special-token text is plain text), cut to `max_length` when given.
pub fn encode(
    examples: &[Example],
    labels: &[String],
    tok: &Tokenizer,
    max_length: Option<usize>,
) -> Result<Encoded> {
    let mut out = Encoded::default();
    for e in examples {
        let mut ids = tok.encode(&e.text, scratchllm_tokenizer::SpecialMode::AsText)?;
        if let Some(m) = max_length {
            if ids.len() > m {
                ids.truncate(m);
                out.truncated += 1;
            }
        }
        out.ids.push(ids);
        out.labels
            .push(labels.iter().position(|l| *l == e.label).unwrap_or(0) as u32);
    }
    Ok(out)
}
