//! The command line: arbitrary arguments (NUL-separated) are parsed and, for a training command,
//! checked into its run configuration — a usage or settings error, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut args = vec!["scratchllm".to_string()];
    args.extend(text.split('\0').map(str::to_string));
    let _ = scratchllm::check_args(&args);
});
