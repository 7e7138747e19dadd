//! `chat`: a terminal conversation with a model. Turns are formatted in the model's prompt style,
//! answers stream as they are generated, the oldest turns are dropped when the conversation
//! outgrows the context, and slash commands change the settings.
use crate::out::{self, outln};
use anyhow::{bail, Context, Result};
use clap::Args;
use scratchllm_model::decode::{Decoding, Piece};
use scratchllm_model::prompt::{Message, Role};
use scratchllm_model::{GenerateOptions, PromptStyle};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
pub struct ChatArgs {
    /// A model directory (any layout) or an adapter directory.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_parser = crate::train_args::prompt_style, help = crate::train_args::MODEL_PROMPT_STYLE_HELP)]
    prompt_style: Option<PromptStyle>,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    /// A system message (replaces the Alpaca preamble).
    #[arg(long)]
    system: Option<String>,
    /// How the weight matrices are stored: f32, or bf16 (half the memory, faster generation).
    #[arg(long, value_enum, help = crate::model::DTYPE_HELP)]
    dtype: Option<crate::model::InferDtype>,
}

const HELP: &str = "commands: /reset (new conversation), /temp X (0 = greedy), /topk K (0 = off), \
                    /max N (tokens per answer), /system TEXT, /help, /quit (or Ctrl-D)";

struct Settings {
    temperature: f32,
    top_k: usize,
    max_tokens: usize,
    system: Option<String>,
}

/// Handles a slash command; returns the reply, or `None` to quit.
fn command(line: &str, s: &mut Settings, history: &mut Vec<Message>) -> Option<String> {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim();
    Some(match cmd {
        "/quit" | "/exit" => return None,
        "/reset" => {
            history.clear();
            "(new conversation)".into()
        }
        "/temp" => match arg.parse::<f32>() {
            Ok(t) if (0.0..=5.0).contains(&t) => {
                s.temperature = t;
                if t == 0.0 {
                    "(temperature 0: greedy)".into()
                } else {
                    format!("(temperature {t})")
                }
            }
            _ => format!("(/temp takes a number from 0 to 5, not {arg:?})"),
        },
        "/topk" => match arg.parse::<usize>() {
            Ok(k) => {
                s.top_k = k;
                if k == 0 {
                    "(top-k off)".into()
                } else {
                    format!("(top-k {k})")
                }
            }
            _ => format!("(/topk takes a whole number, not {arg:?})"),
        },
        "/max" => match arg.parse::<usize>() {
            Ok(n) if n > 0 => {
                s.max_tokens = n;
                format!("(at most {n} tokens per answer)")
            }
            _ => format!("(/max takes a positive whole number, not {arg:?})"),
        },
        "/system" => {
            s.system = (!arg.is_empty()).then(|| arg.to_string());
            "(system message set; it applies from the next answer)".into()
        }
        "/help" => HELP.into(),
        other => format!("(unknown command {other}; {HELP})"),
    })
}

pub fn run(a: ChatArgs) -> Result<()> {
    let mut files = crate::model::load_model(&a.model.display().to_string(), a.seed)?;
    if files.config.num_classes.is_some() {
        bail!(
            "{} is a classifier; use `scratchllm classify`",
            a.model.display()
        );
    }
    let style = PromptStyle::for_model(a.prompt_style.or(files.prompt_style), &files.tokenizer);
    let model = crate::model::build_model(&mut files, a.dtype)?;
    let tok = &files.tokenizer;
    let ctx = files.config.context_length;
    let generating = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (generating, interrupted) = (generating.clone(), interrupted.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut s = Settings {
        temperature: a.temperature,
        top_k: a.top_k,
        max_tokens: a.max_tokens.max(1),
        system: a.system.clone(),
    };
    eprintln!(
        "chatting with {} ({} prompts, context {ctx} tokens). {HELP}",
        a.model.display(),
        style.name()
    );
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('/') {
            match command(line, &mut s, &mut history) {
                Some(reply) => eprintln!("{reply}"),
                None => break,
            }
            continue;
        }
        history.push(Message {
            role: Role::User,
            content: line.to_string(),
        });
        // Keep the conversation within the context, leaving room for the answer.
        let budget = ctx.saturating_sub(s.max_tokens.min(ctx / 2)).max(1);
        let mut dropped = false;
        let prompt = loop {
            let mut messages = Vec::new();
            if let Some(sys) = &s.system {
                messages.push(Message {
                    role: Role::System,
                    content: sys.clone(),
                });
            }
            messages.extend(history.iter().cloned());
            let ids = style.encode_chat(tok, &messages)?;
            if ids.len() <= budget || history.len() <= 1 {
                break ids;
            }
            history.drain(..history.len().min(2));
            dropped = true;
        };
        if dropped {
            eprintln!("(the oldest turns were dropped to fit the context)");
        }
        let prompt = if prompt.len() > budget {
            eprintln!("(the message is longer than the context; only its end is used)");
            prompt[prompt.len() - budget..].to_vec()
        } else {
            prompt
        };
        let greedy = s.temperature == 0.0;
        let opts = GenerateOptions {
            max_new_tokens: s.max_tokens.min(ctx - prompt.len()),
            temperature: (!greedy).then_some(s.temperature),
            top_k: if greedy || s.top_k == 0 {
                None
            } else {
                Some(s.top_k)
            },
            top_p: None,
            seed: a.seed.wrapping_add(turn),
            stop_id: tok.end_of_text().map(|r| r.id),
            use_cache: true,
        };
        turn += 1;
        let stops = style.turn_markers().iter().map(|m| m.to_string()).collect();
        // The end of a text or of a turn (the chat template's end-of-turn tokens).
        let stop_ids = tok.stop_ids();
        let mut decoding = Decoding::new(&model, tok, &prompt, &opts, stop_ids, stops)?;
        let mut answer = String::new();
        generating.store(true, Ordering::SeqCst);
        while let Some(piece) = decoding.next_piece()? {
            let (text, done) = match piece {
                Piece::Text(t) => (t, false),
                Piece::Done(t, _) => (t, true),
            };
            out::text(&text)?;
            answer += &text;
            if done || interrupted.swap(false, Ordering::SeqCst) {
                break;
            }
        }
        generating.store(false, Ordering::SeqCst);
        outln!()?;
        history.push(Message {
            role: Role::Assistant,
            content: answer.trim().to_string(),
        });
    }
    Ok(())
}
