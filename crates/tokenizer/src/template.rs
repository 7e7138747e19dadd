//! Chat templates: the Jinja program a model's `tokenizer_config.json` (or `chat_template.jinja`)
//! ships, rendered as transformers' `apply_chat_template(..., tokenize=False)` renders it
//! (`transformers/utils/chat_template_utils.py`): `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python's string and dict methods (minijinja-contrib's pycompat), `tojson` as `json.dumps` with
//! `ensure_ascii=False`, `raise_exception` and `strftime_now`, and the variables `messages`, `tools`,
//! `documents`, `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, ...) and any
//! extra ones (`enable_thinking`).
use crate::error::{Result, TokenizerError};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One chat template and the file it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplate {
    /// `default` unless the file names it (`tool_use`, ...).
    pub name: String,
    pub source: String,
    pub origin: PathBuf,
}

/// What to render besides the messages.
#[derive(Clone, Debug, Default)]
pub struct ChatOptions {
    pub add_generation_prompt: bool,
    /// Extra variables, `NAME=VALUE` style: each value is read as JSON when it parses, else taken as
    /// a string (`enable_thinking=false`, `tools=[...]`).
    pub vars: Vec<(String, String)>,
    /// The template to use by name; by default `tool_use` when tools are given and there is one,
    /// else `default`.
    pub template: Option<String>,
}

/// Renders `template` over `messages_json` (a JSON list of `{role, content}` objects, order kept).
/// `specials` are the special-token variables (`bos_token`, ...).
pub fn render(
    template: &ChatTemplate,
    messages_json: &str,
    specials: &[(String, serde_json::Value)],
    opts: &ChatOptions,
) -> Result<String> {
    let messages = parse_messages(messages_json)?;
    let err = |message: String| TokenizerError::Template {
        path: template.origin.clone(),
        message,
    };
    let env = environment();
    let compiled = env
        .template_from_str(&template.source)
        .map_err(|e| err(describe(&e)))?;
    let mut ctx: BTreeMap<Value, Value> = BTreeMap::new();
    for (name, value) in specials {
        ctx.insert(
            Value::from(name.as_str()),
            serde_json::from_value::<Value>(value.clone()).unwrap_or_default(),
        );
    }
    ctx.insert("messages".into(), messages);
    ctx.insert("tools".into(), Value::from(()));
    ctx.insert("documents".into(), Value::from(()));
    ctx.insert(
        "add_generation_prompt".into(),
        opts.add_generation_prompt.into(),
    );
    for (name, text) in &opts.vars {
        ctx.insert(Value::from(name.as_str()), var_value(text));
    }
    compiled
        .render(Value::from_object(ctx))
        .map_err(|e| err(describe(&e)))
}

/// Which of `templates` to use: the one named, else `tool_use` for a call with tools, else
/// `default` (transformers' choice).
pub fn choose<'a>(templates: &'a [ChatTemplate], opts: &ChatOptions) -> Result<&'a ChatTemplate> {
    let has_tools = opts
        .vars
        .iter()
        .any(|(n, v)| n == "tools" && v.trim() != "null");
    let wanted = match &opts.template {
        Some(name) => name.as_str(),
        None if has_tools && templates.iter().any(|t| t.name == "tool_use") => "tool_use",
        None => "default",
    };
    templates.iter().find(|t| t.name == wanted).ok_or_else(|| {
        let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
        TokenizerError::Messages(if names.is_empty() {
            "this tokenizer has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja)".into()
        } else {
            format!("no chat template named {wanted:?} (there are: {})", names.join(", "))
        })
    })
}

/// A `--var` value: JSON when it parses, else the text itself.
fn var_value(text: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::from(text))
}

/// The messages: a list of objects, each with a string `role` and a `content` that is a string, a
/// list of parts or null (an assistant turn with tool calls).
fn parse_messages(json: &str) -> Result<Value> {
    let bad = |m: String| TokenizerError::Messages(m);
    let list: Vec<Value> =
        serde_json::from_str(json).map_err(|e| bad(format!("not a JSON list of messages: {e}")))?;
    for (i, m) in list.iter().enumerate() {
        if m.kind() != ValueKind::Map {
            return Err(bad(format!(
                "message {i} is not an object with \"role\" and \"content\""
            )));
        }
        let field = |k: &str| m.get_attr(k).unwrap_or_default();
        if field("role").kind() != ValueKind::String {
            return Err(bad(format!("message {i} has no string \"role\"")));
        }
        let content = field("content");
        let valid = matches!(
            content.kind(),
            ValueKind::String | ValueKind::Seq | ValueKind::None
        ) || (content.is_undefined() && field("tool_calls").kind() == ValueKind::Seq);
        if !valid {
            return Err(bad(format!(
                "message {i} has no \"content\" (a string, a list of parts, or null)"
            )));
        }
    }
    Ok(Value::from(list))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // `build` fails only for bad custom delimiters, and these are the default ones.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, RAISED).with_source(Raised(msg)))
        },
    );
    env.add_function("strftime_now", |format: String| {
        crate::meta::strftime_now(&format)
    });
    env.add_filter("tojson", tojson);
    env
}

const RAISED: &str = "raise_exception";

/// The message a template raised, carried as the error's source.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A template error in words: what the template raised, or where it went wrong.
fn describe(e: &minijinja::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return format!("the template raised an error: {}", r.0);
        }
        source = s.source();
    }
    let what = match e.kind() {
        ErrorKind::SyntaxError => "syntax error",
        _ => "rendering failed",
    };
    let line = e
        .line()
        .map(|l| format!(" at line {l}"))
        .unwrap_or_default();
    format!("{what}{line}: {}", e.detail().unwrap_or(&e.to_string()))
}

/// `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(out)
}

fn dump(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(v)),
        ValueKind::String => python_string(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { sep } else { "" });
                newline(out, depth + 1);
                dump(item, indent, sort, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                out.push_str(if i > 0 { sep } else { "" });
                newline(out, depth + 1);
                python_string(&k.to_string(), out);
                out.push_str(": ");
                dump(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => python_string(&v.to_string(), out),
    }
    Ok(())
}

/// A number as Python prints it in JSON: integers plainly, floats with a `.0` when whole.
fn python_number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// A JSON string with `ensure_ascii=False`: quotes, backslashes and control characters escaped.
fn python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(source: &str) -> ChatTemplate {
        ChatTemplate {
            name: "default".into(),
            source: source.into(),
            origin: "chat_template.jinja".into(),
        }
    }

    #[test]
    fn renders_like_transformers() {
        let tpl = t("{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}<a>{% endif %}");
        let opts = ChatOptions {
            add_generation_prompt: true,
            ..Default::default()
        };
        let out = render(&tpl, r#"[{"role": "user", "content": " hi "}]"#, &[], &opts).unwrap();
        assert_eq!(out, "<user>hi\n<a>");
        let json = t("{{ x | tojson }}");
        let opts = ChatOptions {
            vars: vec![("x".into(), r#"{"b": [1, 2.0, "é\n"], "a": null}"#.into())],
            ..Default::default()
        };
        assert_eq!(
            render(&json, "[]", &[], &opts).unwrap(),
            r#"{"b": [1, 2.0, "é\n"], "a": null}"#
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let raise = t("{{ raise_exception('roles must alternate') }}");
        let e = render(&raise, "[]", &[], &ChatOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("raised an error: roles must alternate"),
            "{e}"
        );
        let broken = t("{% for m in messages %}");
        let e = render(&broken, "[]", &[], &ChatOptions::default()).unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
        let e = render(
            &t(""),
            r#"[{"content": "x"}]"#,
            &[],
            &ChatOptions::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("message 0 has no string \"role\""),
            "{e}"
        );
    }
}
