"""Benchmarks of a running `scratchllm serve` (or any OpenAI-compatible server): throughput with N
concurrent clients, time to first token on an idle and on a busy server, and a soak run.

    python3 scripts/bench_serve.py URL --clients 8 --tokens 64 --ignore-eos
        N clients at once, each one greedy completion of `--tokens` tokens (the tokens counted are
        the ones the server reports in `usage`). Prints `RESULT tokens_per_s X` (all clients'
        tokens / wall time).
    python3 scripts/bench_serve.py URL --ttft --clients 8
        Time to first token of a short streamed request on the idle server, then again while
        `--clients` streams of `--tokens` tokens run (median of `--probes`, each sent after a
        random pause of up to 100 ms, or `--back-to-back`). Prints `RESULT ttft_idle_ms`,
        `RESULT ttft_busy_ms` and their ratio.
    python3 scripts/bench_serve.py URL --soak 300 --clients 32 --pid PID
        `--clients` clients for that many seconds, streaming and not, a fifth of the streams
        dropped mid-way. Fails (exit 1) on any 5xx, a completed stream without `[DONE]`, or RSS
        (of PID, read from /proc) at the end more than 5% (`--rss-growth-pct`) above RSS after the
        first fifth of the run.

`--api-key KEY` sends `Authorization: Bearer KEY`; `--model NAME` names the model in requests.
"""
import argparse, http.client, json, random, statistics, threading, time, urllib.parse

p = argparse.ArgumentParser()
p.add_argument("url")
p.add_argument("--clients", type=int, default=1)
p.add_argument("--tokens", type=int, default=64)
p.add_argument("--ignore-eos", action="store_true")
p.add_argument("--api-key")
p.add_argument("--model")
p.add_argument("--ttft", action="store_true")
p.add_argument("--probes", type=int, default=9, help="time-to-first-token requests; the median is printed")
p.add_argument("--back-to-back", action="store_true", help="send each probe as the previous one ends")
p.add_argument("--soak", type=float, default=0)
p.add_argument("--pid", type=int)
p.add_argument("--rss-growth-pct", type=float, default=5.0, help="the soak's limit on RSS growth")
p.add_argument("--repeat", type=int, default=1, help="throughput runs; the median is printed")
a = p.parse_args()
url = urllib.parse.urlparse(a.url)


def headers():
    h = {"Content-Type": "application/json"}
    if a.api_key:
        h["Authorization"] = f"Bearer {a.api_key}"
    return h


def body(prompt, tokens, stream):
    b = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": stream}
    if a.ignore_eos:
        b["ignore_eos"] = True
    if a.model:
        b["model"] = a.model
    return json.dumps(b)


def connect():
    return http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)


def complete(i, tokens):
    """One non-streamed completion: (status, completion tokens)."""
    c = connect()
    c.request("POST", "/v1/completions", body(f"Client {i}: Every effort moves you", tokens, False), headers())
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        return r.status, 0
    return r.status, json.loads(data)["usage"]["completion_tokens"]


def stream(i, tokens, on_first=None, drop_after=None):
    """One streamed completion: (status, chunks with text, ended with [DONE], dropped)."""
    c = connect()
    c.request("POST", "/v1/completions", body(f"Client {i}: Every effort moves you", tokens, True), headers())
    r = c.getresponse()
    if r.status != 200:
        r.read()
        c.close()
        return r.status, 0, False, False
    chunks, done = 0, False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        text = json.loads(data)["choices"][0].get("text", "")
        if text:
            chunks += 1
            if chunks == 1 and on_first:
                on_first()
            if drop_after is not None and chunks >= drop_after:
                c.close()
                return r.status, chunks, False, True
    c.close()
    return r.status, chunks, done, False


def throughput():
    done = []
    statuses = []

    def client(i):
        status, n = complete(i, a.tokens)
        statuses.append(status)
        done.append(n)

    start = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.time() - start
    bad = [s for s in statuses if s != 200]
    print(f"{a.clients} clients, {sum(done)} tokens in {secs:.2f} s" + (f", statuses {bad}" if bad else ""))
    return sum(done) / secs


def ttft_once(i):
    # Each probe arrives at a random moment: sent straight after the previous one's answer, it
    # would arrive just as the server starts its next decode step and wait for the whole step
    # (`--back-to-back` measures that).
    if not a.back_to_back:
        time.sleep(random.uniform(0, 0.1))
    start = time.time()
    first = []
    stream(i, 1, on_first=lambda: first.append(time.time()))
    return (first[0] - start) * 1e3 if first else float("nan")


def ttft():
    idle = statistics.median(ttft_once(1000 + k) for k in range(a.probes))
    started = threading.Semaphore(0)
    threads = [
        threading.Thread(target=stream, args=(i, a.tokens, started.release)) for i in range(a.clients)
    ]
    for t in threads:
        t.start()
    for _ in threads:
        started.acquire()
    busy = statistics.median(ttft_once(2000 + k) for k in range(a.probes))
    for t in threads:
        t.join()
    print(f"RESULT ttft_idle_ms {idle:.1f}")
    print(f"RESULT ttft_busy_ms {busy:.1f}")
    print(f"RESULT ttft_busy_over_idle {busy / idle:.2f}")


def rss_kb():
    with open(f"/proc/{a.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak():
    end = time.time() + a.soak
    lock = threading.Lock()
    stats = {"requests": 0, "5xx": 0, "other": 0, "streams": 0, "done": 0, "dropped": 0}
    rss_early = []

    def client(i):
        rng = random.Random(i)
        while time.time() < end:
            tokens = rng.randint(1, a.tokens)
            try:
                if rng.random() < 0.5:
                    status, _ = complete(i, tokens)
                    ok_stream = None
                else:
                    drop = rng.randint(1, max(1, tokens // 2)) if rng.random() < 0.2 else None
                    status, _, done, dropped = stream(i, tokens, drop_after=drop)
                    ok_stream = (done, dropped)
            except OSError:
                status, ok_stream = -1, None
            with lock:
                stats["requests"] += 1
                if status >= 500:
                    stats["5xx"] += 1
                elif status != 200:
                    stats["other"] += 1
                if ok_stream is not None and status == 200:
                    done, dropped = ok_stream
                    stats["dropped" if dropped else "streams"] += 1
                    stats["done"] += done

    def sample_rss():
        time.sleep(a.soak / 5)
        if a.pid:
            rss_early.append(rss_kb())

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sampler.join()
    print(json.dumps(stats))
    failed = stats["5xx"] > 0 or stats["done"] != stats["streams"]
    if a.pid:
        late = rss_kb()
        growth = late / rss_early[0] - 1
        print(f"RESULT rss_early_mb {rss_early[0] / 1024:.1f}")
        print(f"RESULT rss_end_mb {late / 1024:.1f}")
        print(f"RESULT rss_growth_pct {100 * growth:.1f}")
        failed |= growth * 100 > a.rss_growth_pct
    print(f"RESULT soak_requests {stats['requests']}")
    print(f"RESULT soak_ok {0 if failed else 1}")
    raise SystemExit(1 if failed else 0)


if a.soak:
    soak()
elif a.ttft:
    ttft()
else:
    rates = [throughput() for _ in range(a.repeat)]
    print(f"RESULT tokens_per_s {statistics.median(rates):.1f}")
