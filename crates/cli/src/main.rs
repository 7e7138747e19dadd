//! The `scratchllm` binary: parses the command line, applies `--threads`, runs the command and
//! turns its result into an exit code (see the library's docs, `lib.rs`).
use clap::Parser;
use scratchllm::{exit_code, run, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    scratchllm_model::kernels::keep_freed_memory();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        let cpus = scratchllm_model::kernels::logical_cpus();
        if n > cpus {
            eprintln!("warning: --threads {n} is more than the {cpus} logical CPUs this process may use; using {cpus}");
        }
    }
    scratchllm_model::kernels::set_threads(cli.threads);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit_code(&e),
    }
}
