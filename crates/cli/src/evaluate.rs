//! `evaluate`: scores a file of model responses with a judge model (the book's chapter 7), and/or
//! measures a model's loss and perplexity on the reference responses (no judge needed).
use crate::out::outln;
use anyhow::{bail, Context, Result};
use clap::Args;
use scratchllm_fetch::judge::{Item, Judge};
use scratchllm_model::PromptStyle;
use scratchllm_train::instruct::{read_entries, response_loss};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct EvaluateArgs {
    /// A JSON list of {instruction, input, output, model_response} (finetune instruct writes one:
    /// test-responses.json).
    #[arg(long)]
    responses: PathBuf,
    /// The judge's OpenAI-compatible API base, e.g. http://localhost:11434/v1 (Ollama).
    #[arg(long, requires = "judge_model")]
    judge_url: Option<String>,
    /// The judge model's name, e.g. llama3.
    #[arg(long, requires = "judge_url")]
    judge_model: Option<String>,
    /// Where the scores go [default: RESPONSES with .scores.json]; items already scored there are
    /// skipped, so an interrupted evaluation continues.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The field holding the response to score.
    #[arg(long, default_value = "model_response")]
    field: String,
    /// Seconds to wait for each answer (at most a day).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Attempts after the first on connection errors, 429 and 5xx.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// An environment variable holding the judge's API key, if it needs one.
    #[arg(long, value_name = "ENV_VAR")]
    api_key_env: Option<String>,
    /// Also (or only) measure this model's loss and perplexity on the reference outputs.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_parser = crate::train_args::prompt_style, help = crate::train_args::MODEL_PROMPT_STYLE_HELP)]
    prompt_style: Option<PromptStyle>,
}

pub fn run(a: EvaluateArgs) -> Result<()> {
    if a.judge_url.is_none() && a.model.is_none() {
        bail!("give a judge (--judge-url and --judge-model), a --model for loss and perplexity, or both");
    }
    let entries = read_entries(&a.responses, &[])?;
    if let Some(dir) = &a.model {
        let mut files = crate::model::load_model(&dir.display().to_string(), 0)?;
        let style = PromptStyle::for_model(a.prompt_style.or(files.prompt_style), &files.tokenizer);
        let gpt = crate::model::build_model(&mut files, Some(crate::model::InferDtype::F32))?;
        let loss = response_loss(&gpt, &files.tokenizer, style, &entries, 8)?;
        outln!(
            "reference responses: loss {loss:.4}, perplexity {:.2} ({} entries, {} prompts)",
            (loss as f64).exp(),
            entries.len(),
            style.name()
        )?;
    }
    let (Some(url), Some(model)) = (a.judge_url, a.judge_model) else {
        return Ok(());
    };
    let items = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let Some(response) = e.extra.get(&a.field).and_then(|v| v.as_str()) else {
                bail!(
                    "{}: entry {i} has no string \"{}\" to score",
                    a.responses.display(),
                    a.field
                );
            };
            Ok(Item {
                instruction: e.instruction.clone(),
                input: e.input.clone(),
                output: e.output.clone(),
                response: response.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let api_key = match &a.api_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("${var} is not set"))?),
        None => None,
    };
    // Bounded: the client adds the timeout to the clock, which overflows (a panic) near u64::MAX.
    if !(1..=86_400).contains(&a.timeout) {
        bail!("--timeout {} must be in 1..=86400 seconds", a.timeout);
    }
    let judge = Judge {
        url,
        model,
        timeout: Duration::from_secs(a.timeout),
        retries: a.retries,
        api_key,
    };
    let out = a.out.unwrap_or_else(|| {
        let mut p = a.responses.clone().into_os_string();
        p.push(".scores.json");
        PathBuf::from(p)
    });
    let report = judge
        .score_all(
            &items,
            &out,
            &mut |s, done, total| match (s.score, &s.error) {
                (Some(score), _) => eprintln!("[{done}/{total}] item {}: {score}", s.index),
                (None, Some(e)) => eprintln!("[{done}/{total}] item {}: no score: {e}", s.index),
                (None, None) => {}
            },
        )
        .map_err(anyhow::Error::msg)?;
    match report.average {
        Some(avg) => outln!(
            "average score {avg:.2} over {} responses ({} without a score); details in {}",
            report.scored,
            report.failed,
            out.display()
        )?,
        None => outln!("no response got a score; details in {}", out.display())?,
    }
    Ok(())
}
