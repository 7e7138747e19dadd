"""Aggregate generation throughput of a running `scratchllm serve` with N concurrent clients.

    python3 scripts/bench_serve.py http://127.0.0.1:8080 --clients 4 --tokens 100
Each client asks for one greedy completion of up to `--tokens` tokens; the tokens counted are the
ones the server reports in `usage`. Prints `RESULT tokens_per_s N` (all clients' tokens / wall time).
"""
import argparse, json, threading, time, urllib.request

p = argparse.ArgumentParser()
p.add_argument("url")
p.add_argument("--clients", type=int, default=1)
p.add_argument("--tokens", type=int, default=100)
a = p.parse_args()

done = []


def client(i):
    body = json.dumps({"prompt": f"Client {i}: Every effort moves you", "max_tokens": a.tokens, "temperature": 0}).encode()
    req = urllib.request.Request(a.url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        done.append(json.load(r)["usage"]["completion_tokens"])


start = time.time()
threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
secs = time.time() - start
print(f"{a.clients} clients, {sum(done)} tokens in {secs:.2f} s")
print(f"RESULT tokens_per_s {sum(done) / secs:.1f}")
