//! `data list` and `data get`.
use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use scratchllm_fetch::{self as fetch, Outcome};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// What `data get` can download.
    List,
    /// Download GPT-2 weights or the book's data sets into the cache (checksummed, resumable).
    Get(GetArgs),
}

#[derive(Args)]
pub struct GetArgs {
    /// Asset names (see `data list`), e.g. gpt2-small, gpt2-small-openai, the-verdict, sms-spam.
    #[arg(required = true)]
    names: Vec<String>,
    /// Cache directory [default: $SCRATCHLLM_CACHE, else ~/.cache/scratchllm].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Fetch every file from MIRROR/ASSET/FILE instead of its canonical URL [env: SCRATCHLLM_MIRROR].
    #[arg(long)]
    mirror: Option<String>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::List => {
            for a in fetch::ASSETS {
                println!("{:<24} {}", a.name, a.about);
            }
            Ok(())
        }
        DataCommand::Get(a) => get(a),
    }
}

/// Progress bars on standard error, one per file.
struct Bars {
    bar: ProgressBar,
    quiet: bool,
}

impl fetch::Progress for Bars {
    fn start(&mut self, name: &str, total: Option<u64>, done: u64) {
        if self.quiet {
            return;
        }
        self.bar = ProgressBar::new(total.unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:32} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            self.bar.set_style(style);
        }
        self.bar.set_message(name.to_string());
        self.bar.set_position(done);
    }

    fn advance(&mut self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&mut self, name: &str, outcome: &Outcome) {
        self.bar.finish_and_clear();
        if !self.quiet {
            match outcome {
                Outcome::Cached => eprintln!("{name}: cached"),
                Outcome::Downloaded {
                    bytes,
                    resumed_from: 0,
                } => eprintln!("{name}: {bytes} bytes"),
                Outcome::Downloaded {
                    bytes,
                    resumed_from,
                } => eprintln!("{name}: {bytes} bytes (resumed at {resumed_from})"),
            }
        }
    }
}

fn get(a: GetArgs) -> Result<()> {
    let opts = fetch::Options {
        cache_dir: a.cache_dir.unwrap_or_else(fetch::default_cache_dir),
        mirror: a.mirror.or_else(|| std::env::var("SCRATCHLLM_MIRROR").ok()),
    };
    let assets = a
        .names
        .iter()
        .map(|n| fetch::asset(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bars = Bars {
        bar: ProgressBar::hidden(),
        quiet: a.quiet,
    };
    for asset in assets {
        let dir = fetch::get(asset, &opts, &mut bars)?;
        println!("{}", dir.display());
    }
    Ok(())
}
