"""What the default's prefix terms see of each preset's prompts, old text against new (static).

    PYTHONPATH=src python docs/results/sched-v2/seeds/text_view.py

For a server that holds only the request's shared part (system prompt / repository context /
group prompt: the first ``system_prompt_len`` tokens), per preset and text: the share of prompts
longer than the prefix scorer's window (256 blocks of 64 characters), the mean prefix score
(matched blocks / the prompt's blocks, both capped at the window) and the share of requests whose
``prefill-load-scorer`` gate is closed (cached estimate >= 0.5 x the prompt's estimate).
"""

from __future__ import annotations

from kvroute_bench.text import render
from kvroute_bench.workload import generate, resolve_spec

WINDOW = 256
BLOCK = 64
PRESETS = ("multi-turn", "agent-sessions", "shared-prefix-sglang", "code-generation")
PRESETS += ("shared-prefix", "shared-prefix-low")


def old(tokens: tuple[int, ...]) -> str:
    return " ".join(f"w{t}" for t in tokens)


def main() -> None:
    print(
        "| preset | text | over the window | prefix score of a shared-part holder | gate closed |"
    )
    print("|---|---|---|---|---|")
    for name in PRESETS:
        spec = resolve_spec(name)
        reqs = generate(spec, rate=100, duration=10, seed=1)
        for label, fn in (("old `w<id>`", old), ("new", render)):
            over = score = closed = 0.0
            for r in reqs:
                total = len(fn(r.prompt)) // BLOCK
                shared = len(fn(r.prompt[: spec.system_prompt_len])) // BLOCK
                over += total > WINDOW
                score += min(shared, WINDOW) / min(total, WINDOW)
                closed += min(shared, WINDOW) * BLOCK >= 0.5 * len(fn(r.prompt))
            n = len(reqs)
            print(f"| {name} | {label} | {over / n:.0%} | {score / n:.2f} | {closed / n:.0%} |")


if __name__ == "__main__":
    main()
