//! The rows `--pandas-sampling` takes are numpy's: `RandomState(seed).choice(len, n, replace=False)`,
//! which pandas' `DataFrame.sample(n, random_state=seed)` calls (needs `$SCRATCHLLM_PYTHON` with
//! numpy; scripts/test.sh installs it).
use scratchllm_train::pandas_sample::sample;
use std::process::Command;

#[test]
fn samples_are_numpys_legacy_random_state() {
    let Ok(python) = std::env::var("SCRATCHLLM_PYTHON") else {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "set SCRATCHLLM_PYTHON (a Python with numpy); required under CI=true"
        );
        eprintln!("SKIPPED: set SCRATCHLLM_PYTHON (a Python with numpy)");
        return;
    };
    // (rows, taken, seed): the book's SMS data (4,825 ham sampled to the 747 spam, then the 1,494
    // balanced rows shuffled), small and edge cases, and a seed at the top of the range.
    let cases = [
        (4825usize, 747usize, 123u32),
        (1494, 1494, 123),
        (10, 3, 0),
        (1, 1, 7),
        (2, 2, 1),
        (70_000, 5, u32::MAX),
    ];
    let script = format!(
        "import json, numpy as np\nprint(json.dumps([np.random.RandomState(s).choice(l, n, replace=False).tolist() for (l, n, s) in {:?}]))",
        cases
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .output()
        .expect("running $SCRATCHLLM_PYTHON");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<Vec<usize>> = serde_json::from_slice(&out.stdout).unwrap();
    for ((len, n, seed), want) in cases.iter().zip(want) {
        assert_eq!(
            sample(*len, *n, *seed),
            want,
            "{len} rows, {n} taken, seed {seed}"
        );
    }
}
