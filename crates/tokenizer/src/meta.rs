//! What a tokenizer knows beside its vocabulary: its special roles (bos, eos, end of turn, and the
//! ids generation stops on), its chat templates, and warnings from loading it.
//!
//! They come from the files transformers reads beside `tokenizer.json`: `tokenizer_config.json`
//! (`bos_token`, `eos_token`, ..., `chat_template` as a string or a list of named templates),
//! `chat_template.jinja` (the newer layout, which wins), `chat_template.json`, and
//! `generation_config.json` (`eos_token_id`, one id or a list, which generation stops on).
use crate::bpe::Tokenizer;
use crate::error::{Result, TokenizerError};
use crate::io::read_text;
use crate::template::{self, ChatOptions, ChatTemplate};
use serde_json::Value;
use std::path::Path;

/// Tokens that end a turn in the chat formats of today's families.
const END_OF_TURN: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
];
/// The special-token variables transformers hands a chat template.
const SPECIAL_VARS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A token that plays a role, by text and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub text: String,
    pub id: u32,
}

/// Special roles, templates and warnings of a tokenizer.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub bos: Option<Role>,
    pub eos: Option<Role>,
    pub pad: Option<Role>,
    pub end_of_turn: Vec<Role>,
    /// Extra ids generation stops on (`generation_config.json`'s `eos_token_id`).
    pub generation_eos: Vec<u32>,
    pub templates: Vec<ChatTemplate>,
    /// The special-token variables of chat templates, as `tokenizer_config.json` gives them.
    pub template_vars: Vec<(String, Value)>,
    pub warnings: Vec<String>,
}

impl Tokenizer {
    /// Reads the configuration files in `dir`, when there are any, into the special roles and
    /// chat templates; roles that no file names are guessed from the tokens themselves.
    pub fn read_configs(&mut self, dir: &Path) -> Result<()> {
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        if let Some(config) = &config {
            self.apply_tokenizer_config(&dir.join("tokenizer_config.json"), config)?;
        }
        self.read_templates(dir, config.as_ref())?;
        if let Some(gen) = read_json(&dir.join("generation_config.json"))? {
            self.meta.generation_eos = ids_of(gen.get("eos_token_id"));
            if self.meta.bos.is_none() {
                self.meta.bos = ids_of(gen.get("bos_token_id"))
                    .first()
                    .and_then(|&id| self.role_of_id(id));
            }
        }
        self.guess_roles();
        Ok(())
    }

    pub(crate) fn apply_tokenizer_config(&mut self, path: &Path, config: &Value) -> Result<()> {
        for name in SPECIAL_VARS {
            let Some(text) = config.get(*name).and_then(token_text) else {
                continue;
            };
            let role = self.role_of_text(&text).ok_or_else(|| {
                TokenizerError::format(
                    path,
                    format!("{name} {text:?} is not a token of this tokenizer"),
                )
            })?;
            match *name {
                "bos_token" => self.meta.bos = Some(role),
                "eos_token" => self.meta.eos = Some(role),
                "pad_token" => self.meta.pad = Some(role),
                _ => {}
            }
            self.meta
                .template_vars
                .push((name.to_string(), Value::String(text)));
        }
        if let Some(extra) = config
            .get("additional_special_tokens")
            .and_then(Value::as_array)
        {
            let texts: Vec<Value> = extra
                .iter()
                .filter_map(token_text)
                .map(Value::String)
                .collect();
            self.meta
                .template_vars
                .push(("additional_special_tokens".into(), Value::Array(texts)));
        }
        Ok(())
    }

    fn read_templates(&mut self, dir: &Path, config: Option<&Value>) -> Result<()> {
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            self.meta.templates = vec![ChatTemplate {
                name: "default".into(),
                source: read_text(&jinja)?,
                origin: jinja,
            }];
            return Ok(());
        }
        let (origin, value) = match config.and_then(|c| c.get("chat_template")) {
            Some(v) => (dir.join("tokenizer_config.json"), v.clone()),
            None => match read_json(&dir.join("chat_template.json"))? {
                Some(v) => (
                    dir.join("chat_template.json"),
                    v.get("chat_template").cloned().unwrap_or(Value::Null),
                ),
                None => return Ok(()),
            },
        };
        self.meta.templates = templates_of(&origin, &value)?;
        Ok(())
    }

    /// End-of-turn tokens by name, and eos where no file gave one.
    pub(crate) fn guess_roles(&mut self) {
        self.meta.end_of_turn = END_OF_TURN
            .iter()
            .filter_map(|t| self.role_of_text(t))
            .collect();
        if self.meta.eos.is_none() {
            self.meta.eos = self.role_of_text(crate::gpt2::ENDOFTEXT);
        }
    }

    fn role_of_text(&self, text: &str) -> Option<Role> {
        let id = match &self.hf {
            Some(p) => p.token_to_id(text),
            None => self.special_id(text),
        }?;
        Some(Role {
            text: text.to_string(),
            id,
        })
    }

    fn role_of_id(&self, id: u32) -> Option<Role> {
        let text = match &self.hf {
            Some(p) => p.token_text(id)?.to_string(),
            None => String::from_utf8_lossy(self.token_bytes(id).ok()?).into_owned(),
        };
        Some(Role { text, id })
    }

    /// The special roles, templates and load warnings.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Warnings from loading (a merge list that does not cover the vocabulary, ...).
    pub fn warnings(&self) -> &[String] {
        &self.meta.warnings
    }

    pub(crate) fn warn(&mut self, message: String) {
        self.meta.warnings.push(message);
    }

    /// The token that ends a text: eos (GPT-2's `<|endoftext|>`, Llama 3's `<|end_of_text|>`,
    /// Gemma's `<eos>`, as the tokenizer's files name it). Documents are joined with it for
    /// pretraining, and plain generation stops on it.
    pub fn end_of_text(&self) -> Option<Role> {
        self.meta
            .eos
            .clone()
            .or_else(|| self.role_of_text(crate::gpt2::ENDOFTEXT))
    }

    /// The ids generation stops on: eos, generation_config's eos ids, and end-of-turn tokens.
    pub fn stop_ids(&self) -> Vec<u32> {
        let m = &self.meta;
        let mut ids: Vec<u32> = self.end_of_text().iter().map(|r| r.id).collect();
        ids.extend(&m.generation_eos);
        ids.extend(m.end_of_turn.iter().map(|r| r.id));
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(*id));
        ids
    }

    /// Which family the tokenizer looks like, by its pipeline and special tokens.
    pub fn family(&self) -> &'static str {
        let has = |t: &str| self.role_of_text(t).is_some();
        match &self.hf {
            _ if has("<|begin_of_text|>") && has("<|eot_id|>") => "llama3",
            _ if has("<|im_start|>") && has("<think>") => "qwen3",
            _ if has("<|im_start|>") && has("<|im_end|>") => "qwen2",
            _ if has("<start_of_turn>") && has("<end_of_turn>") => "gemma3",
            None => "gpt2 (byte-level BPE, GPT-2 split pattern)",
            Some(p) if p.model.is_byte_level() => "byte-level BPE (tokenizer.json)",
            Some(_) => "BPE (tokenizer.json)",
        }
    }

    /// Renders a chat (`messages_json`: a JSON list of `{role, content}`) with this tokenizer's
    /// template, as transformers' `apply_chat_template(..., tokenize=False)`.
    pub fn render_chat(&self, messages_json: &str, opts: &ChatOptions) -> Result<String> {
        let chosen = template::choose(&self.meta.templates, opts)?;
        template::render(chosen, messages_json, &self.meta.template_vars, opts)
    }
}

/// The `tokenizer_config.json` that gives back `tok`'s special roles and chat templates, if it
/// has any that came from configuration files.
pub fn tokenizer_config(tok: &Tokenizer) -> Option<Value> {
    let m = tok.meta();
    if m.templates.is_empty() && m.template_vars.is_empty() {
        return None;
    }
    let mut config = serde_json::Map::new();
    for (name, value) in &m.template_vars {
        config.insert(name.clone(), value.clone());
    }
    let template = match &m.templates[..] {
        [] => None,
        [one] if one.name == "default" => Some(Value::String(one.source.clone())),
        many => Some(Value::Array(
            many.iter()
                .map(|t| serde_json::json!({"name": t.name, "template": t.source}))
                .collect(),
        )),
    };
    if let Some(t) = template {
        config.insert("chat_template".into(), t);
    }
    Some(Value::Object(config))
}

/// A token given as a string or as an AddedToken object (`{"content": ...}`).
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    let one = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(x) => one(x).into_iter().collect(),
        None => Vec::new(),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    serde_json::from_str(&read_text(path)?)
        .map(Some)
        .map_err(|e| TokenizerError::format(path, format!("invalid JSON: {e}")))
}

/// `chat_template`: a string, or a list of `{"name": ..., "template": ...}`.
fn templates_of(origin: &Path, v: &Value) -> Result<Vec<ChatTemplate>> {
    let one = |name: &str, source: &str| ChatTemplate {
        name: name.to_string(),
        source: source.to_string(),
        origin: origin.to_path_buf(),
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![one("default", s)]),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, t)| {
                match (
                    t.get("name").and_then(Value::as_str),
                    t.get("template").and_then(Value::as_str),
                ) {
                    (Some(n), Some(s)) => Ok(one(n, s)),
                    _ => Err(TokenizerError::format(
                        origin,
                        format!("chat_template[{i}] is not {{\"name\": ..., \"template\": ...}}"),
                    )),
                }
            })
            .collect(),
        _ => Err(TokenizerError::format(
            origin,
            "chat_template is neither a string nor a list of named templates",
        )),
    }
}

/// `datetime.now().strftime(format)` for the directives chat templates use, in UTC.
pub fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(format, secs)
}

fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[(days % 7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn strftime_formats_dates() {
        // 2024-07-26 00:00:00 UTC, the date Llama 3.1's template falls back to.
        assert_eq!(super::strftime("%d %b %Y", 1_721_952_000), "26 Jul 2024");
        assert_eq!(super::strftime("%A %B %-", 0), "Thursday January %-");
    }
}
