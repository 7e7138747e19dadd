//! Post-processors of a `tokenizer.json` (`tokenizers/src/processors`), for `add_special_tokens`:
//! TemplateProcessing puts special tokens around the ids (Gemma's `<bos>`, Llama 3.1's
//! `<|begin_of_text|>`); ByteLevel only trims offsets, so it leaves ids alone; Sequence runs each.
use super::component::Component;
use crate::error::Result;
use serde_json::Value;

/// One post-processor, as far as ids are concerned.
#[derive(Clone, Debug)]
pub enum PostProcessor {
    /// The `single` template: special-token ids, and `None` where the sequence goes.
    Template(Vec<Option<Vec<u32>>>),
    /// Offsets only.
    ByteLevel,
    Sequence(Vec<PostProcessor>),
}

impl PostProcessor {
    /// Reads the post-processor at `c` (`None` for JSON null).
    pub fn parse(c: &Component) -> Result<Option<Self>> {
        if c.value.is_null() {
            return Ok(None);
        }
        let p = match c.kind()? {
            "TemplateProcessing" => template(c)?,
            "ByteLevel" => PostProcessor::ByteLevel,
            "Sequence" => PostProcessor::Sequence(c.each("processors", |item| {
                PostProcessor::parse(item)?.ok_or_else(|| item.error("null inside a Sequence"))
            })?),
            other => return Err(c.unsupported(other)),
        };
        Ok(Some(p))
    }

    /// The ids of one sequence with the special tokens added.
    pub fn apply(&self, ids: Vec<u32>) -> Vec<u32> {
        match self {
            PostProcessor::Template(pieces) => {
                let mut out = Vec::with_capacity(ids.len() + pieces.len());
                for piece in pieces {
                    match piece {
                        Some(special) => out.extend_from_slice(special),
                        None => out.extend_from_slice(&ids),
                    }
                }
                out
            }
            PostProcessor::ByteLevel => ids,
            PostProcessor::Sequence(list) => list.iter().fold(ids, |ids, p| p.apply(ids)),
        }
    }
}

/// `{"single": [{"SpecialToken": {"id": ..}}, {"Sequence": {"id": "A"}}], "special_tokens": {..}}`.
fn template(c: &Component) -> Result<PostProcessor> {
    let single = c
        .get("single")
        .and_then(Value::as_array)
        .ok_or_else(|| c.error("\"single\" is not a list"))?;
    let specials = c.get("special_tokens").and_then(Value::as_object);
    let mut pieces = Vec::with_capacity(single.len());
    for (i, piece) in single.iter().enumerate() {
        let bad = |m: &str| c.error(format!("single[{i}]: {m}"));
        if let Some(seq) = piece.get("Sequence") {
            if seq.get("id").and_then(Value::as_str) != Some("A") {
                return Err(bad("a single-sequence template can only hold sequence A"));
            }
            pieces.push(None);
        } else if let Some(name) = piece
            .get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
        {
            let ids = specials
                .and_then(|m| m.get(name))
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    bad(&format!(
                        "special token {name:?} is not in \"special_tokens\""
                    ))
                })?;
            let ids = ids
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    bad(&format!(
                        "special token {name:?} has an id that is not a u32"
                    ))
                })?;
            pieces.push(Some(ids));
        } else {
            return Err(bad("neither {\"SpecialToken\": ..} nor {\"Sequence\": ..}"));
        }
    }
    Ok(PostProcessor::Template(pieces))
}
