"""Parse cost per request of each request parser (kvroute.protocol.parsers), ~10 KB bodies.

Run: ``PYTHONPATH=src .venv/bin/python -m tests.bench.parsers_micro`` (figures in
docs/benchmarks.md). Best of 5 repeats of 2,000 parses each, wall time.
"""

from __future__ import annotations

import json
import timeit

from kvroute.protocol.parsers import ParserSet


def _bodies() -> list[tuple[str, bytes, str]]:
    system = "You are a helpful assistant. " * 200
    turns = [("user" if i % 2 == 0 else "assistant", f"turn {i} " * 20) for i in range(20)]
    chat = {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "system", "content": system}]
        + [{"role": r, "content": t} for r, t in turns],
    }
    messages = {
        "model": "m",
        "max_tokens": 64,
        "system": [{"type": "text", "text": system}],
        "messages": [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in turns],
    }
    generate = {"model": "m", "token_ids": list(range(2000)), "sampling_params": {"max_tokens": 8}}
    return [
        ("openai chat", json.dumps(chat).encode(), "/v1/chat/completions"),
        ("anthropic messages", json.dumps(messages).encode(), "/v1/messages"),
        ("vllm generate", json.dumps(generate).encode(), "/inference/v1/generate"),
        ("passthrough", json.dumps(chat).encode(), "/v1/other"),
    ]


def main() -> None:
    parsers = ParserSet()
    for label, body, path in _bodies():
        n = 2000
        runs = timeit.repeat(lambda b=body, p=path: parsers.parse_request(b, p), number=n, repeat=5)
        print(f"{label:20s} {len(body):6d} B  {min(runs) / n * 1e6:7.1f} us/parse")


if __name__ == "__main__":
    main()
