//! Vocabulary files: reading every format people have, writing ours and Hugging Face's.
//!
//! | format | files | merge rule |
//! |---|---|---|
//! | OpenAI GPT-2 | `encoder.json` + `vocab.bpe` | merge list |
//! | Hugging Face (slow) | `vocab.json` + `merges.txt` | merge list |
//! | Hugging Face (fast) | `tokenizer.json`, merges as `"a b"` or `["a", "b"]` | merge list |
//! | tiktoken | `NAME.tiktoken` (base64 token, rank) | ranks |
//! | scratchllm | `scratchllm-tokenizer.json` (versioned) | either |
//!
//! Every reader reports the file and, for line-based files, the line of the first problem.
use crate::bpe::{MergeRule, Tokenizer};
use crate::bytes_unicode;
use crate::error::{Result, TokenizerError};
use crate::hf::SplitPreset;
use crate::io::{atomic_write, read_text};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File name of our own format inside a tokenizer or model directory.
pub const SCRATCHLLM_FILE: &str = "scratchllm-tokenizer.json";
const FORMAT_NAME: &str = "scratchllm-bpe";
/// Version 1 splits with GPT-2's pattern; version 2 names its split pattern in "pre_tokenizer".
const FORMAT_VERSION: u64 = 1;
const FORMAT_VERSION_SPLIT: u64 = 2;
const ENDOFTEXT: &str = "<|endoftext|>";

/// Loads a tokenizer from a directory or file, detecting the format, with the special roles and
/// chat templates of the configuration files beside it ([`crate::meta`]).
pub fn load(path: &Path) -> Result<Tokenizer> {
    let mut tok = load_vocabulary(path)?;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    tok.read_configs(dir)?;
    Ok(tok)
}

/// The vocabulary alone (no configuration files).
fn load_vocabulary(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        return load_dir(path);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let sibling = |n: &str| path.with_file_name(n);
    match name {
        "encoder.json" | "vocab.bpe" => load_vocab_merges(&sibling("encoder.json"), &sibling("vocab.bpe")),
        "vocab.json" | "merges.txt" => load_vocab_merges(&sibling("vocab.json"), &sibling("merges.txt")),
        _ if name.ends_with(".tiktoken") => load_tiktoken(path),
        _ if name.ends_with(".json") => load_json(path),
        _ => Err(TokenizerError::format(
            path,
            "unknown tokenizer file; expected tokenizer.json, scratchllm-tokenizer.json, encoder.json \
             (+ vocab.bpe), vocab.json (+ merges.txt) or a .tiktoken file",
        )),
    }
}

fn load_dir(dir: &Path) -> Result<Tokenizer> {
    let has = |n: &str| dir.join(n).is_file();
    if has(SCRATCHLLM_FILE) {
        return load_json(&dir.join(SCRATCHLLM_FILE));
    }
    if has("tokenizer.json") {
        return load_json(&dir.join("tokenizer.json"));
    }
    for (v, m) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")] {
        if has(v) && has(m) {
            return load_vocab_merges(&dir.join(v), &dir.join(m));
        }
    }
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| TokenizerError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if let [one] = entries
        .iter()
        .filter(|n| n.ends_with(".tiktoken"))
        .collect::<Vec<_>>()[..]
    {
        return load_tiktoken(&dir.join(one));
    }
    let mut found = entries;
    found.sort();
    Err(TokenizerError::format(
        dir,
        format!(
            "no tokenizer found (looked for {SCRATCHLLM_FILE}, tokenizer.json, vocab.json + merges.txt, \
             encoder.json + vocab.bpe, one *.tiktoken); the directory has: {}",
            if found.is_empty() { "nothing".into() } else { found.join(", ") }
        ),
    ))
}

/// `encoder.json` + `vocab.bpe` (OpenAI) or `vocab.json` + `merges.txt` (Hugging Face).
pub fn load_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
    let vocab: HashMap<String, u64> =
        serde_json::from_str(&read_text(vocab_path)?).map_err(|e| {
            TokenizerError::format(vocab_path, format!("not a JSON map of token to id: {e}"))
        })?;
    let specials: Vec<String> = vocab
        .contains_key(ENDOFTEXT)
        .then(|| ENDOFTEXT.to_string())
        .into_iter()
        .collect();
    let (tokens, ids) = vocab_from_map(vocab_path, vocab, &specials)?;
    let text = read_text(merges_path)?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let Some((a, b)) = line.split_once(' ') else {
            return Err(TokenizerError::line(
                merges_path,
                i + 1,
                "expected two tokens separated by a space",
            ));
        };
        merges.push((i + 1, a.to_string(), b.to_string()));
    }
    let special_ids: Vec<(String, u32)> = specials.iter().map(|s| (s.clone(), ids[s])).collect();
    let mut tok = build_merge_list(merges_path, tokens, &ids, merges, &special_ids)?;
    crate::hf::check_coverage(&mut tok);
    Ok(tok)
}

/// Token ids by their text form.
type TextIds = HashMap<String, u32>;

/// Token bytes by id from a map of text form to id; ids must run 0..n without gaps.
fn vocab_from_map(
    path: &Path,
    vocab: HashMap<String, u64>,
    raw: &[String],
) -> Result<(Vec<Vec<u8>>, TextIds)> {
    let n = vocab.len();
    let mut tokens: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut ids = HashMap::with_capacity(n);
    for (text, id) in vocab {
        let slot = usize::try_from(id).ok().filter(|&i| i < n).ok_or_else(|| {
            TokenizerError::format(
                path,
                format!("token {text:?} has id {id}, but there are only {n} tokens"),
            )
        })?;
        let bytes = if raw.contains(&text) {
            text.as_bytes().to_vec()
        } else {
            bytes_unicode::decode(&text).map_err(|c| {
                TokenizerError::format(path, format!("token {text:?} (id {id}) has the character {c:?}, which is not in GPT-2's byte map"))
            })?
        };
        if tokens[slot].replace(bytes).is_some() {
            return Err(TokenizerError::format(
                path,
                format!("id {id} is given to two tokens"),
            ));
        }
        ids.insert(text, slot as u32);
    }
    let tokens = tokens
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| TokenizerError::format(path, "the ids do not run from 0 without gaps"))?;
    Ok((tokens, ids))
}

/// Resolves merges given as pairs of text forms (with their line or index) into a tokenizer.
fn build_merge_list(
    path: &Path,
    tokens: Vec<Vec<u8>>,
    ids: &HashMap<String, u32>,
    merges: Vec<(usize, String, String)>,
    specials: &[(String, u32)],
) -> Result<Tokenizer> {
    let mut seen: HashMap<(u32, u32), usize> = HashMap::with_capacity(merges.len());
    let mut list = Vec::with_capacity(merges.len());
    for (line, a, b) in merges {
        let id = |t: &str| {
            ids.get(t).copied().ok_or_else(|| {
                TokenizerError::line(
                    path,
                    line,
                    format!("merge part {t:?} is not in the vocabulary"),
                )
            })
        };
        let pair = (id(&a)?, id(&b)?);
        if !ids.contains_key(&format!("{a}{b}")) {
            return Err(TokenizerError::line(
                path,
                line,
                format!(
                    "merge result {:?} is not in the vocabulary",
                    format!("{a}{b}")
                ),
            ));
        }
        if let Some(first) = seen.insert(pair, line) {
            return Err(TokenizerError::line(
                path,
                line,
                format!("duplicate merge {a:?} {b:?} (first at line {first})"),
            ));
        }
        list.push(pair);
    }
    Tokenizer::from_merges(tokens, list, specials)
        .map_err(|e| TokenizerError::format(path, e.to_string()))
}

/// A `.tiktoken` file: one `base64(token) rank` per line, ranks 0..n in order.
pub fn load_tiktoken(path: &Path) -> Result<Tokenizer> {
    let text = read_text(path)?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |m: &str| TokenizerError::line(path, i + 1, m.to_string());
        let (b64, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `base64-token rank`"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&format!("bad base64 {b64:?}: {e}")))?;
        let rank: usize = rank
            .trim()
            .parse()
            .map_err(|_| bad(&format!("bad rank {rank:?}")))?;
        if rank != tokens.len() {
            return Err(bad(&format!(
                "rank {rank} out of order (expected {})",
                tokens.len()
            )));
        }
        tokens.push(bytes);
    }
    // tiktoken keeps special tokens outside the file; GPT-2's is `<|endoftext|>`, right after.
    let specials = [(ENDOFTEXT.to_string(), tokens.len() as u32)];
    Tokenizer::from_ranks(tokens, &specials)
        .map_err(|e| TokenizerError::format(path, e.to_string()))
}

/// A JSON tokenizer: ours (`"format": "scratchllm-bpe"`) or Hugging Face's `tokenizer.json`.
pub fn load_json(path: &Path) -> Result<Tokenizer> {
    let text = read_text(path)?;
    #[derive(serde::Deserialize)]
    struct Probe {
        format: Option<String>,
        model: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_str(&text)
        .map_err(|e| TokenizerError::format(path, format!("invalid JSON: {e}")))?;
    if probe.format.as_deref() == Some(FORMAT_NAME) {
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| TokenizerError::format(path, format!("invalid JSON: {e}")))?;
        load_ours(path, &v)
    } else if probe.model.is_some() {
        load_hf(path, &text)
    } else {
        Err(TokenizerError::format(path, "neither a Hugging Face tokenizer.json (no \"model\") nor a scratchllm tokenizer (no \"format\")"))
    }
}

/// A `tokenizer.json`: GPT-2's own pipeline runs on the GPT-2 path, any other on its pipeline.
pub(crate) fn load_hf(path: &Path, text: &str) -> Result<Tokenizer> {
    let pipeline = crate::hf::parse(path, text)?;
    let mut tok = match crate::hf::plain_gpt2(&pipeline) {
        Some((tokens, merges, specials)) => Tokenizer::from_merges(tokens, merges, &specials)
            .map_err(|e| TokenizerError::format(path, e.to_string()))?,
        None => Tokenizer::from_pipeline(pipeline)?,
    };
    crate::hf::check_coverage(&mut tok);
    Ok(tok)
}

fn load_ours(path: &Path, v: &Value) -> Result<Tokenizer> {
    let bad = |m: String| TokenizerError::format(path, m);
    let version = v.get("version").and_then(Value::as_u64).unwrap_or(0);
    let preset = match (version, v.get("pre_tokenizer").and_then(Value::as_str)) {
        (FORMAT_VERSION, _) => SplitPreset::Gpt2,
        (FORMAT_VERSION_SPLIT, Some(name)) => SplitPreset::from_name(name)
            .ok_or_else(|| bad(format!("unknown pre_tokenizer {name:?} (this scratchllm knows gpt2 and llama3)")))?,
        _ => {
            return Err(bad(format!(
                "format version {version}, but this scratchllm reads version {FORMAT_VERSION} or {FORMAT_VERSION_SPLIT}; \
                 use the scratchllm that wrote it, or load its tokenizer.json instead"
            )))
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut tokens = Vec::new();
    for (i, t) in v["tokens"]
        .as_array()
        .ok_or_else(|| bad("\"tokens\" is not a list".into()))?
        .iter()
        .enumerate()
    {
        let s = t
            .as_str()
            .ok_or_else(|| bad(format!("tokens[{i}] is not a string")))?;
        tokens.push(
            b64.decode(s)
                .map_err(|e| bad(format!("tokens[{i}] is not base64: {e}")))?,
        );
    }
    let specials: Vec<(String, u32)> =
        serde_json::from_value::<Vec<(String, u32)>>(v["specials"].clone())
            .map_err(|e| bad(format!("\"specials\" is not a list of [text, id]: {e}")))?;
    let tok = match v["rule"].as_str() {
        Some("ranks") => Tokenizer::from_ranks(tokens, &specials),
        Some("merge-list") => {
            let merges: Vec<(u32, u32)> = serde_json::from_value(v["merges"].clone())
                .map_err(|e| bad(format!("\"merges\" is not a list of [id, id]: {e}")))?;
            Tokenizer::from_merges(tokens, merges, &specials)
        }
        other => return Err(bad(format!("unknown merge rule {other:?}"))),
    };
    crate::hf::with_split(tok.map_err(|e| bad(e.to_string()))?, preset)
}

/// Ordinary token bytes (ids below the first special, which come last in our files).
fn ordinary_tokens(tok: &Tokenizer) -> Vec<&[u8]> {
    let vocab = tok.vocab();
    (0..vocab.len() as u32)
        .filter(|&id| !tok.is_special(id))
        .map(|id| vocab[id as usize].as_slice())
        .collect()
}

/// Writes our format (atomically).
pub fn save_scratchllm(tok: &Tokenizer, path: &Path) -> Result<()> {
    let preset = match tok.pipeline() {
        None => SplitPreset::Gpt2,
        Some(p) => p.preset.ok_or_else(|| {
            TokenizerError::Vocabulary(
                "a tokenizer.json pipeline has no scratchllm format; save it as tokenizer.json"
                    .into(),
            )
        })?,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let ordinary = ordinary_tokens(tok);
    if ordinary.len() + tok.specials().len() != tok.vocab_size() {
        return Err(TokenizerError::Vocabulary(
            "special tokens must come after all ordinary tokens to be saved".into(),
        ));
    }
    let rule = match tok.rule() {
        MergeRule::Ranks => "ranks",
        MergeRule::MergeList => "merge-list",
    };
    let version = match preset {
        SplitPreset::Gpt2 => FORMAT_VERSION,
        _ => FORMAT_VERSION_SPLIT,
    };
    let mut doc = json!({
        "format": FORMAT_NAME,
        "version": version,
        "pre_tokenizer": preset.name(),
        "rule": rule,
        "tokens": ordinary.iter().map(|t| b64.encode(t)).collect::<Vec<_>>(),
        "specials": tok.specials(),
    });
    if tok.rule() == MergeRule::MergeList {
        doc["merges"] = json!(tok.merge_list());
    }
    write_json(path, &doc)
}

/// Writes a Hugging Face `tokenizer.json` atomically: a pipeline as it was read, anything else as
/// GPT-2's byte-level BPE.
pub fn save_hf_tokenizer_json(tok: &Tokenizer, path: &Path) -> Result<()> {
    write_json(path, &hf_tokenizer_json(tok))
}

/// The `tokenizer.json` document of `tok`: a pipeline as it was read, anything else as GPT-2's
/// byte-level BPE.
pub fn hf_tokenizer_json(tok: &Tokenizer) -> Value {
    if let Some(p) = tok.pipeline() {
        return crate::hf::to_json(p);
    }
    let text = |id: u32| token_text(tok, id);
    let mut vocab = Map::new();
    for id in 0..tok.vocab_size() as u32 {
        vocab.insert(text(id), json!(id));
    }
    let merges: Vec<Value> = tok
        .merge_list()
        .iter()
        .map(|&(a, b)| json!([text(a), text(b)]))
        .collect();
    let added: Vec<Value> = tok
        .specials()
        .iter()
        .map(|(t, id)| {
            json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true
            })
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    })
}

/// Writes `vocab.json` and `merges.txt` (the files `GPT2Tokenizer` reads) into `dir`. They carry no
/// split pattern, so a tokenizer that does not split as GPT-2 is refused rather than saved wrong.
pub fn save_vocab_merges(tok: &Tokenizer, dir: &Path) -> Result<()> {
    if tok.pipeline().is_some() {
        return Err(TokenizerError::Vocabulary(
            "vocab.json + merges.txt cannot hold this tokenizer's pipeline; save it as tokenizer.json".into(),
        ));
    }
    let mut vocab = Map::new();
    for id in 0..tok.vocab_size() as u32 {
        vocab.insert(token_text(tok, id), json!(id));
    }
    write_json(&dir.join("vocab.json"), &Value::Object(vocab))?;
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in tok.merge_list() {
        merges.push_str(&format!("{} {}\n", token_text(tok, a), token_text(tok, b)));
    }
    let path = dir.join("merges.txt");
    atomic_write(&path, merges.as_bytes())
}

fn token_text(tok: &Tokenizer, id: u32) -> String {
    let bytes = &tok.vocab()[id as usize];
    if tok.is_special(id) {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        bytes_unicode::encode(bytes)
    }
}

fn write_json(path: &Path, doc: &Value) -> Result<()> {
    let mut text =
        serde_json::to_string(doc).map_err(|e| TokenizerError::format(path, e.to_string()))?;
    text.push('\n');
    atomic_write(path, text.as_bytes())
}

/// Saves every format we write into `dir`: ours, `tokenizer.json`, `vocab.json` + `merges.txt`; for a
/// `tokenizer.json` pipeline, `tokenizer.json` (and ours for a trained split preset). The special
/// roles and chat templates read from a `tokenizer_config.json` are written back to one.
pub fn save_dir(tok: &Tokenizer, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| TokenizerError::io(dir, e))?;
    let mut names = Vec::new();
    let pipeline_preset = tok.pipeline().map(|p| p.preset);
    if matches!(pipeline_preset, None | Some(Some(_))) {
        save_scratchllm(tok, &dir.join(SCRATCHLLM_FILE))?;
        names.push(SCRATCHLLM_FILE);
    }
    save_hf_tokenizer_json(tok, &dir.join("tokenizer.json"))?;
    names.push("tokenizer.json");
    if pipeline_preset.is_none() {
        save_vocab_merges(tok, dir)?;
        names.extend(["vocab.json", "merges.txt"]);
    }
    if let Some(config) = crate::meta::tokenizer_config(tok) {
        write_json(&dir.join("tokenizer_config.json"), &config)?;
        names.push("tokenizer_config.json");
    }
    Ok(names.iter().map(|n| dir.join(n)).collect())
}
