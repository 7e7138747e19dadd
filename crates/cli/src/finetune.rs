//! `finetune classify|instruct|dpo` and `classify`: the book's chapters 6 and 7 (and appendix E's
//! LoRA, the DPO bonus) on the command line. The flags they share are [`crate::train_args`]'s
//! groups; each command sets its own defaults (the book's), shown by `--help`.
use crate::terminal::{report, Terminal};
use crate::train_args::{
    prompt_style, OptimArgs, OutArgs, RunArgs, SplitArgs, TuneArgs, PROMPT_STYLE_HELP,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use scratchllm_model::classifier::{predict, ClassifierSpec, TokenPosition};
use scratchllm_model::PromptStyle;
use scratchllm_train::classify::{finetune_classify, ClassifyConfig, Column, Results, TableFormat};
use scratchllm_train::dpo::{finetune_dpo, DpoConfig, DpoResults};
use scratchllm_train::instruct::{finetune_instruct, InstructConfig, InstructResults};
use scratchllm_train::Ending;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum FinetuneCommand {
    /// Fine-tune a model into a text classifier (spam or not, sentiment, topics, ...).
    Classify(Box<ClassifyArgs>),
    /// Fine-tune a language model to follow instructions (Alpaca-style JSON).
    Instruct(Box<InstructArgs>),
    /// Preference-tune a language model with DPO ({instruction, input, output, chosen, rejected}).
    Dpo(Box<DpoArgs>),
}

/// What instruction tuning and DPO share: how entries become prompts.
#[derive(Args)]
pub struct PromptArgs {
    #[arg(long, default_value = "alpaca", value_parser = prompt_style, help = PROMPT_STYLE_HELP)]
    prompt_style: PromptStyle,
    /// Shuffle the entries (with --seed) before splitting; the book splits in file order.
    #[arg(long)]
    shuffle_split: bool,
    /// Cut batches to this many tokens [default: the context length].
    #[arg(long)]
    max_length: Option<usize>,
}

/// Defaults: the book's DPO bonus (1 epoch, batch 8, lr 5e-6, weight decay 0.01, beta 0.1,
/// evaluation every 5 steps over 5 batches, responses scored without their prompts).
#[derive(Args)]
#[command(
    mut_arg("data", |a| a.help("A JSON list of {instruction, input, output, chosen, rejected} entries")),
    mut_arg("model", |a| a.help("The model to tune, also the frozen reference: a path (any layout) or a preset")),
    mut_arg("lr", |a| a.default_value("5e-6")),
    mut_arg("weight_decay", |a| a.default_value("0.01")),
)]
pub struct DpoArgs {
    #[command(flatten)]
    tune: TuneArgs,
    #[command(flatten)]
    out: OutArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    #[command(flatten)]
    split: SplitArgs,
    /// Score prompts too, not only the responses.
    #[arg(long)]
    no_mask_prompt: bool,
    /// How far the policy may move from the reference (DPO's beta).
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    run: RunArgs,
}

fn dpo_config(a: &DpoArgs) -> Result<DpoConfig> {
    let tune = a.tune.config()?;
    let book = DpoConfig::book(&tune.model, &tune.data);
    let (train, test) = a.split.fractions("test")?;
    Ok(DpoConfig {
        prompt_style: a.prompts.prompt_style,
        train_fraction: train,
        test_fraction: test,
        shuffle_split: a.prompts.shuffle_split,
        max_length: a.prompts.max_length,
        mask_prompt: !a.no_mask_prompt,
        beta: a.beta,
        optim: a.optim.config()?,
        run: a.run.config()?,
        tune,
        ..book
    })
}

fn dpo_run(a: DpoArgs) -> Result<()> {
    let summary = |r: DpoResults| {
        format!(
            "reward margin: train {:.3} | validation {:.3} | test {:.3} (loss {:.3} / {:.3} / {:.3}); {:.0} s",
            r.train.margin(), r.val.margin(), r.test.margin(), r.train.loss, r.val.loss, r.test.loss, r.seconds
        )
    };
    let run = |dir: &Path, cfg, term: &mut Terminal| finetune_dpo(dir, cfg, term);
    let config = || dpo_config(&a);
    tune_run(&a.out, config, run, "finetune dpo", summary, |_| vec![])
}

/// A fine-tuning command's run: a new one from `config`, or the one `--resume` names, with its
/// progress on the terminal, then its summary and where its outputs are (`also`).
fn tune_run<C, R>(
    out: &OutArgs,
    config: impl FnOnce() -> Result<C>,
    train: impl FnOnce(&Path, Option<C>, &mut Terminal) -> scratchllm_model::Result<(Ending, Option<R>)>,
    command: &str,
    summary: impl FnOnce(R) -> String,
    also: impl FnOnce(&Path) -> Vec<(&'static str, PathBuf)>,
) -> Result<()> {
    let (run_dir, new) = out.run_dir()?;
    let cfg = if new { Some(config()?) } else { None };
    let mut term = Terminal::new()?;
    let (ending, results) = train(&run_dir, cfg, &mut term)
        .with_context(|| format!("{command} in {}", run_dir.display()))?;
    let also = also(&run_dir);
    report(
        &term,
        ending,
        &run_dir,
        command,
        results.map(summary),
        &also,
    )
}

/// Defaults: the book's chapter 7 (2 epochs, batch 8, lr 5e-5, weight decay 0.1, every weight
/// trained, evaluation every 5 steps over 5 batches, 256-token test responses).
#[derive(Args)]
#[command(
    mut_arg("data", |a| a.help("A JSON list of {instruction, input, output} entries")),
    mut_arg("epochs", |a| a.default_value("2")),
)]
pub struct InstructArgs {
    #[command(flatten)]
    tune: TuneArgs,
    #[command(flatten)]
    out: OutArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    #[command(flatten)]
    split: SplitArgs,
    /// Train only on the responses: the prompt's targets are ignored.
    #[arg(long)]
    mask_prompt: bool,
    /// Tokens generated for each test response (0: none).
    #[arg(long, default_value_t = 256)]
    response_tokens: usize,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    run: RunArgs,
}

fn instruct_config(a: &InstructArgs) -> Result<InstructConfig> {
    let tune = a.tune.config()?;
    let book = InstructConfig::book(&tune.model, &tune.data);
    let (train, test) = a.split.fractions("test")?;
    Ok(InstructConfig {
        prompt_style: a.prompts.prompt_style,
        train_fraction: train,
        test_fraction: test,
        shuffle_split: a.prompts.shuffle_split,
        max_length: a.prompts.max_length,
        mask_prompt: a.mask_prompt,
        response_tokens: a.response_tokens,
        optim: a.optim.config()?,
        run: a.run.config()?,
        tune,
        ..book
    })
}

fn instruct_run(a: InstructArgs) -> Result<()> {
    let summary = |r: InstructResults| {
        format!(
            "reference responses: loss train {:.3} | validation {:.3} | test {:.3} (perplexity {:.1}); {:.0} s",
            r.train_loss, r.val_loss, r.test_loss, r.test_perplexity, r.seconds
        )
    };
    let run = |dir: &Path, cfg, term: &mut Terminal| finetune_instruct(dir, cfg, term);
    let also = |dir: &Path| vec![("test responses", dir.join("test-responses.json"))];
    tune_run(
        &a.out,
        || instruct_config(&a),
        run,
        "finetune instruct",
        summary,
        also,
    )
}

#[derive(Clone, Copy, ValueEnum)]
enum PositionArg {
    Last,
    First,
    LastNonPad,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Tsv,
    Csv,
}

/// Defaults: the book's chapter 6 (5 epochs, batch 8, lr 5e-5, weight decay 0.1, the last
/// block, final norm and new head trained, evaluation at each epoch's end on every batch).
#[derive(Args)]
#[command(
    mut_arg("data", |a| a.help("A table of labels and texts: TSV `label<TAB>text` (the SMS Spam Collection) or CSV")),
    mut_arg("trainable", |a| a.default_value("last-block")),
    mut_arg("lora_targets", |a| a.default_value("attention,ff,head")),
    mut_arg("split", |a| a.default_value("0.7,0.1").help("Training and validation fractions (the rest is the test set)")),
    mut_arg("epochs", |a| a.default_value("5")),
    mut_arg("eval_every", |a| a.default_value("0")),
    mut_arg("eval_batches", |a| a.default_value("0")),
)]
pub struct ClassifyArgs {
    #[command(flatten)]
    tune: TuneArgs,
    #[command(flatten)]
    out: OutArgs,
    /// File format [default: csv for .csv files, tsv otherwise].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The first row names the columns [default: yes for CSV, no for TSV].
    #[arg(long)]
    header: Option<bool>,
    /// The label column: a 0-based index or a header name [default: 0, or "label" in a CSV].
    #[arg(long)]
    label_column: Option<String>,
    /// The text column: a 0-based index or a header name [default: 1, or "text" in a CSV].
    #[arg(long)]
    text_column: Option<String>,
    /// Class names in class order, comma-separated [default: the labels found, sorted].
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Undersample every class to the size of the smallest.
    #[arg(long)]
    balance: bool,
    #[command(flatten)]
    split: SplitArgs,
    /// Cut texts to this many tokens [default: the longest training text].
    #[arg(long)]
    max_length: Option<usize>,
    /// Which token's hidden state classifies (`last` reads a pad token when padding, as the book).
    #[arg(long, value_enum, default_value = "last-non-pad")]
    token_position: PositionArg,
    /// Average the hidden states over the text instead of reading one token.
    #[arg(long)]
    average_embeddings: bool,
    /// Balance and split drawing as pandas does (`DataFrame.sample(random_state=SEED)`), as the
    /// book's chapter 6 code: the book's very training, validation and test texts.
    #[arg(long)]
    pandas_sampling: bool,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    run: RunArgs,
}

fn classify_config(a: &ClassifyArgs) -> Result<ClassifyConfig> {
    let tune = a.tune.config()?;
    let book = ClassifyConfig::book(&tune.model, &tune.data);
    let (train_fraction, val_fraction) = a.split.fractions("validation")?;
    let csv = match a.format {
        Some(f) => matches!(f, FormatArg::Csv),
        None => tune
            .data
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    };
    let header = a.header.unwrap_or(csv);
    let column = |given: &Option<String>, index: usize, name: &str| match given {
        Some(s) => Column::parse(s),
        None if header => Column::Name(name.into()),
        None => Column::Index(index),
    };
    Ok(ClassifyConfig {
        format: TableFormat {
            csv,
            header,
            label_column: column(&a.label_column, 0, "label"),
            text_column: column(&a.text_column, 1, "text"),
        },
        labels: (!a.labels.is_empty()).then(|| a.labels.clone()),
        balance: a.balance,
        train_fraction,
        val_fraction,
        max_length: a.max_length,
        token_position: match a.token_position {
            PositionArg::Last => TokenPosition::Last,
            PositionArg::First => TokenPosition::First,
            PositionArg::LastNonPad => TokenPosition::LastNonPad,
        },
        average_embeddings: a.average_embeddings,
        pandas_sampling: a.pandas_sampling,
        optim: a.optim.config()?,
        run: a.run.config()?,
        tune,
        ..book
    })
}

fn classify_run(a: ClassifyArgs) -> Result<()> {
    let summary = |r: Results| {
        format!(
            "accuracy: train {:.2}% | validation {:.2}% | test {:.2}%  (loss {:.3} / {:.3} / {:.3}; {:.0} s)",
            100.0 * r.train_accuracy,
            100.0 * r.val_accuracy,
            100.0 * r.test_accuracy,
            r.train_loss,
            r.val_loss,
            r.test_loss,
            r.seconds
        )
    };
    let run = |dir: &Path, cfg, term: &mut Terminal| finetune_classify(dir, cfg, term);
    let also = |dir: &Path| vec![("results", dir.join("results.json"))];
    tune_run(
        &a.out,
        || classify_config(&a),
        run,
        "finetune classify",
        summary,
        also,
    )
}

/// Checks the settings of a new fine-tuning run without running it.
pub fn check(c: &FinetuneCommand) -> Result<()> {
    let new = match c {
        FinetuneCommand::Classify(a) => a.out.run_dir()?.1.then(|| classify_config(a).map(|_| ())),
        FinetuneCommand::Instruct(a) => a.out.run_dir()?.1.then(|| instruct_config(a).map(|_| ())),
        FinetuneCommand::Dpo(a) => a.out.run_dir()?.1.then(|| dpo_config(a).map(|_| ())),
    };
    new.unwrap_or(Ok(()))
}

pub fn run(c: FinetuneCommand) -> Result<()> {
    match c {
        FinetuneCommand::Classify(a) => classify_run(*a),
        FinetuneCommand::Instruct(a) => instruct_run(*a),
        FinetuneCommand::Dpo(a) => dpo_run(*a),
    }
}

#[derive(Args)]
pub struct PredictArgs {
    /// A classifier: model directory, adapter directory, or a fine-tuning run directory.
    #[arg(long)]
    model: PathBuf,
    /// Texts to classify; without any, one text per line of standard input.
    texts: Vec<String>,
    /// One JSON object per text: label, probabilities by label, truncated.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, value_enum, help = crate::model::DTYPE_HELP)]
    dtype: Option<crate::model::InferDtype>,
}

/// The classifier's model directory: the path itself, or a run directory's model/ or adapter/.
fn classifier_dir(path: &Path) -> PathBuf {
    for inner in ["model", "adapter"] {
        let p = path.join(inner);
        if path.join("config.json").is_file()
            && !path.join("model.safetensors").exists()
            && p.is_dir()
        {
            return p;
        }
    }
    path.to_path_buf()
}

pub fn predict_run(a: PredictArgs) -> Result<()> {
    let dir = classifier_dir(&a.model);
    let mut files = crate::model::load_model(&dir.display().to_string(), 0)?;
    let Some(classes) = files.config.num_classes else {
        bail!(
            "{} is a language model, not a classifier; make one with `scratchllm finetune classify`",
            dir.display()
        );
    };
    // A book-layout classifier carries no reading settings: the book's (last token, full context).
    let spec = files.classifier.clone().unwrap_or_else(|| ClassifierSpec {
        labels: (0..classes).map(|c| c.to_string()).collect(),
        token_position: TokenPosition::Last,
        average_embeddings: false,
        max_length: files.config.context_length,
        pad_id: files.tokenizer.end_of_text().map(|r| r.id).unwrap_or(0),
    });
    spec.validate(files.config.context_length)?;
    let gpt = crate::model::build_model(&mut files, a.dtype)?;
    let texts: Vec<String> = if a.texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("reading texts from standard input")?
    } else {
        a.texts.clone()
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let preds = predict(&gpt, &spec, &files.tokenizer, &refs, a.batch_size)?;
    for (text, p) in texts.iter().zip(preds) {
        if a.json {
            let probs: serde_json::Map<String, serde_json::Value> = spec
                .labels
                .iter()
                .zip(&p.probs)
                .map(|(l, &v)| (l.clone(), serde_json::json!(v)))
                .collect();
            crate::out::outln!(
                "{}",
                serde_json::json!({"text": text, "label": p.label, "probability": p.probs[p.class], "probabilities": probs, "truncated": p.truncated})
            )?;
        } else {
            crate::out::outln!(
                "{}\t{:.4}\t{}{}",
                p.label,
                p.probs[p.class],
                if p.truncated { "[truncated] " } else { "" },
                text
            )?;
        }
    }
    Ok(())
}
