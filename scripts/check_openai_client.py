"""The official `openai` Python client against a running `scratchllm serve` (run by the serve tests).

    python scripts/check_openai_client.py http://127.0.0.1:8080/v1 [API_KEY]
With API_KEY (a server started with --api-key), the client sends it, and a wrong key must fail with
401 invalid_api_key. Prints "openai client: ok" when every check passes.
"""
import sys

import openai

key = sys.argv[2] if len(sys.argv) > 2 else None
client = openai.OpenAI(base_url=sys.argv[1], api_key=key or "unused", max_retries=0, timeout=60)

if key:
    intruder = openai.OpenAI(base_url=sys.argv[1], api_key=key + "x", max_retries=0, timeout=60)
    try:
        intruder.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.code == "invalid_api_key", (e.status_code, e.code)
    else:
        raise AssertionError("a wrong API key was accepted")

models = client.models.list()
name = models.data[0].id

done = client.completions.create(model=name, prompt="Every effort moves you", max_tokens=8, temperature=0)
assert done.choices[0].finish_reason == "length", done
assert done.usage.completion_tokens == 8, done.usage
assert done.choices[0].text.startswith("oca Detect"), done.choices[0].text

chat = client.chat.completions.create(
    model=name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0.7, seed=3
)
assert chat.choices[0].message.role == "assistant"
answer = chat.choices[0].message.content

stream = client.chat.completions.create(
    model=name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0.7, seed=3, stream=True
)
pieces, finish = [], None
for chunk in stream:
    delta = chunk.choices[0].delta
    if delta.content:
        pieces.append(delta.content)
    finish = chunk.choices[0].finish_reason or finish
assert "".join(pieces) == answer, ("".join(pieces), answer)
assert finish == chat.choices[0].finish_reason, finish

two = client.completions.create(model=name, prompt="Every effort moves you", max_tokens=5, n=2, seed=7, temperature=1.0)
assert [c.index for c in two.choices] == [0, 1], two
assert 2 <= two.usage.completion_tokens <= 10, two.usage
chunks = client.completions.create(
    model=name, prompt="Every effort", max_tokens=3, temperature=0, stream=True, stream_options={"include_usage": True}
)
with_usage = [c for c in chunks if c.usage]
assert len(with_usage) == 1 and 1 <= with_usage[0].usage.completion_tokens <= 3, with_usage

# Log-probabilities parse into the client's types: chat's per-token entries with alternatives, and
# completions' lists.
scored = client.chat.completions.create(
    model=name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
)
content = scored.choices[0].logprobs.content
assert len(content) == scored.usage.completion_tokens, content
assert all(len(t.top_logprobs) == 2 and t.logprob <= t.top_logprobs[0].logprob for t in content), content
assert "".join(t.token for t in content) == scored.choices[0].message.content, content
scored = client.completions.create(model=name, prompt="Every effort moves you", max_tokens=3, temperature=0, logprobs=2)
lp = scored.choices[0].logprobs
assert lp.tokens[0] == "oca" and len(lp.token_logprobs) == 3 and len(lp.top_logprobs[0]) == 2, lp

for bad, status in [
    (dict(model=name, messages=[{"role": "user", "content": "x"}], n=9), 400),
    (dict(model=name, messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=21), 400),
    (dict(model="no-such-model", messages=[{"role": "user", "content": "x"}]), 404),
    (dict(model=name, messages=[{"role": "user", "content": "word " * 400}]), 400),
]:
    try:
        client.chat.completions.create(**bad)
    except openai.APIStatusError as e:
        assert e.status_code == status, (bad, e.status_code)
        assert e.body["message"], e.body
    else:
        raise AssertionError(f"{bad} succeeded")
try:
    client.chat.completions.create(model=name, messages=[{"role": "user", "content": "word " * 400}])
except openai.BadRequestError as e:
    assert e.code == "context_length_exceeded", e.code

print("openai client: ok")
