"""Drives a running `meridian up` with the official `openai` package and raw HTTP.

Usage: python3 tests/openai_client.py BASE_URL MODEL
Prints one line per check and exits non-zero on the first failure.
"""
import json
import sys
import urllib.error
import urllib.request

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused-on-loopback", max_retries=0)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


# Models list.
models = [m.id for m in client.models.list().data]
check(model in models, f"models list {models} contains {model}")

# Chat completion, non-streamed, with usage and the routing headers.
raw = client.chat.completions.with_raw_response.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=24,
    temperature=0,
)
chat = raw.parse()
text = chat.choices[0].message.content
check(chat.object == "chat.completion" and len(text) > 0, f"chat completion: {text!r}")
check(chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 20, f"chat usage {chat.usage}")
check(chat.choices[0].finish_reason in ("stop", "length"), "chat finish reason")
check(raw.headers.get("x-meridian-pop") in ("IAD", "AMS", "SIN"), f"x-meridian-pop {raw.headers.get('x-meridian-pop')}")
check(bool(raw.headers.get("x-meridian-worker")), "x-meridian-worker present")

# The same request streamed gives the same text (greedy).
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=24,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
check("".join(pieces) == text, f"streamed chat equals non-streamed: {''.join(pieces)!r}")
check(finish in ("stop", "length") and usage is not None and usage.completion_tokens > 0, "stream finish and usage")

# Text completion.
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
check(comp.choices[0].text.startswith(" Paris"), f"completion: {comp.choices[0].text!r}")

# Geography: callers go to the nearest PoP.
def post(path, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())

small = {"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
for region, pop in [("FRA", "AMS"), ("ORD", "IAD"), ("NRT", "SIN"), ("LHR", "AMS"), ("SYD", "SIN")]:
    status, headers, _ = post("/v1/completions", small, {"x-meridian-region": region})
    check(status == 200 and headers.get("x-meridian-pop") == pop, f"caller at {region} served at {headers.get('x-meridian-pop')} (want {pop})")

# Residency: served only where allowed, or refused with 503.
for region in ["NRT", "ORD", "FRA"]:
    status, headers, _ = post("/v1/completions", small, {"x-meridian-region": region, "x-meridian-jurisdiction": "EU"})
    check(status == 200 and headers.get("x-meridian-pop") == "AMS", f"EU-only request from {region} served at {headers.get('x-meridian-pop')}")
status, _, body = post("/v1/completions", small, {"x-meridian-jurisdiction": "JP"})
check(status == 503 and "JP" in body["error"]["message"], f"no JP PoP: {status} {body['error']['message']}")

# Bad input: the documented status and OpenAI's error shape, and the server keeps serving.
def shape(body):
    e = body.get("error", {})
    return all(k in e for k in ("message", "type", "param", "code"))

cases = [
    (b"{not json", 400, "malformed JSON"),
    ({"model": model, "prompt": 42, "max_tokens": 2}, 400, "prompt of the wrong type"),
    ({"model": "no-such-model", "prompt": "Hi"}, 404, "unknown model"),
    ({"prompt": "Hi"}, 400, "missing model"),
    ({"model": model, "prompt": "Hi", "n": 2}, 400, "n > 1"),
    ({"model": model, "prompt": "Hi", "temperature": 7}, 400, "temperature out of range"),
    ({"model": model, "prompt": "Hi", "max_tokens": 0}, 400, "max_tokens 0"),
    ({"model": model, "prompt": "x" * (2 << 20)}, 413, "oversized body"),
    ({"model": model, "prompt": "word " * 9000, "max_tokens": 8}, 400, "prompt over the context length"),
]
for body, want, what in cases:
    status, _, reply = post("/v1/completions", body)
    check(status == want and shape(reply), f"{what}: {status} {reply.get('error', {}).get('message', '')[:80]!r}")
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=2, temperature=0)
check(comp.choices[0].text.startswith(" Paris"), "still serving after bad input")
print("all checks passed")
