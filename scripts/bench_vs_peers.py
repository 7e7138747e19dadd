#!/usr/bin/env python3
"""Training and generation speed of scratchllm beside the PyTorch peers, alternated in one sitting.

Runs each pair (ours, peer) ROUNDS times in turn and prints the medians, their ratio, and the peak
RSS of the training runs; the table goes to docs/benchmarks.md. Needs a release build and the
peers' environment (PEERS_VENV, see docs/benchmarks.md).

    python3 scripts/bench_vs_peers.py [--rounds 3] [--only train|generate]
"""
import argparse, os, re, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "target", "release", "scratchllm")
PEERS = os.path.join(ROOT, "..", "shared", "peers", "run.sh")

CASES = {
    "train fp32": (
        [OURS, "bench", "train", "--model", "gpt2-small", "--batch", "2", "--ctx", "256", "--steps", "6"],
        [PEERS, "train_step.py", "--model", "124M", "--batch", "2", "--ctx", "256", "--steps", "6", "--dtype", "fp32"],
    ),
    "train bf16": (
        [OURS, "bench", "train", "--model", "gpt2-small", "--batch", "2", "--ctx", "256", "--steps", "6", "--dtype", "bf16"],
        [PEERS, "train_step.py", "--model", "124M", "--batch", "2", "--ctx", "256", "--steps", "6", "--dtype", "bf16"],
    ),
    "generate fp32": (
        [OURS, "bench", "generate", "--model", "gpt2-small", "--new-tokens", "200"],
        [PEERS, "generate_tokens.py", "--model", "124M", "--new-tokens", "200", "--dtype", "fp32"],
    ),
    "generate bf16": (
        [OURS, "bench", "generate", "--model", "gpt2-small", "--new-tokens", "200", "--dtype", "bf16"],
        [PEERS, "generate_tokens.py", "--model", "124M", "--new-tokens", "200", "--dtype", "bf16"],
    ),
}


def run(cmd):
    """tokens/s from the last RESULT line, and the peak RSS in MB."""
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rate = float(re.findall(r"RESULT tokens_per_s ([0-9.]+)", p.stdout)[-1])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    return rate, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["train", "generate"])
    a = ap.parse_args()
    print("| benchmark | scratchllm tokens/s | peer tokens/s | ratio | scratchllm RSS MB | peer RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, (ours, peer) in CASES.items():
        if a.only and not name.startswith(a.only):
            continue
        o, p = [], []
        for _ in range(a.rounds):
            o.append(run(ours))
            p.append(run(peer))
        om, pm = statistics.median(r for r, _ in o), statistics.median(r for r, _ in p)
        orss, prss = max(m for _, m in o), max(m for _, m in p)
        runs = lambda xs: ", ".join(f"{r:.1f}" for r, _ in xs)
        print(f"| {name} | {om:.1f} ({runs(o)}) | {pm:.1f} ({runs(p)}) | {om / pm:.2f}x | {orss:.0f} | {prss:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
