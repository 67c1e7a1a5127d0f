"""Searched per-layer plans vs the best uniform plan at the same modeled latency budget.

    .venv/bin/python benchmarks/bench_search.py [--seeds 0,1,2] [--only digits|minilm] [--algorithm dp]

Targets (co-design search issue), 3 seeds, mean +- std, as the fair-comparison guidance asks
(same dense checkpoint, same mask criterion, same evaluate and cost model for both arms):
  * digits CNN and MiniLM, at least two devices each: at equal modeled latency budget the searched
    plan's accuracy is >= the best uniform plan's, and strictly better on at least one case;
  * MiniLM to a 1.5x modeled speedup on the S4-style engine in under 10 minutes (wall time printed,
    with the process CPU time: on a shared machine wall time includes other people's load).
Seeds: digits trains a CNN per seed (`digits:seed=S`); MiniLM's weights are fixed, the seed draws
the calibration/evaluation split of the sentence set. Each case runs the whole pipeline
(trace, space, sensitivity, DP, uniform baselines, save); MiniLM's per-unit sensitivities are
device-independent and shared between its devices within a seed (the first device of each seed,
the S4 engine, pays the full cost and is the one timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from sparsesim.search.runner import SearchConfig, run_search

# (workload, device, target modeled speedup). Digits on the S4 engine is capped near 1.13x by its
# memory-bound elementwise ops (the cost model's answer), so it is asked for 1.1x.
CASES = (
    ("digits", "xeon-sapphire-rapids", 2.0),
    ("digits", "arm-cortex-a78", 2.0),
    ("digits", "s4-antoum", 1.1),
    ("minilm", "s4-antoum", 1.5),
    ("minilm", "xeon-sapphire-rapids", 1.5),
)
MINILM_S4_LIMIT_S = 600.0


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} +- {statistics.stdev(xs):.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", choices=("digits", "minilm"), default=None)
    ap.add_argument("--algorithm", default="dp", choices=("dp", "both"))
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [c for c in CASES if args.only in (None, c[0])]
    rows: dict[tuple[str, str, float], list[dict]] = {c: [] for c in cases}
    minilm_s4: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            shared: dict[str, dict] = {}
            for wl, dev, target in cases:
                spec = f"{wl}:seed={seed}" if wl == "digits" else wl
                cfg = SearchConfig(workload=spec, device=dev, target_speedup=target, algorithm=args.algorithm,
                                   trials=args.trials, seed=seed, out=os.path.join(tmp, f"{wl}-{dev}-{seed}"))
                w0, c0 = time.perf_counter(), time.process_time()
                doc = run_search(cfg, sensitivity_cache=shared.setdefault(wl, {}))
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                doc["bench_wall_s"], doc["bench_cpu_s"] = wall, cpu
                rows[(wl, dev, target)].append(doc)
                if (wl, dev, target) == ("minilm", "s4-antoum", 1.5):
                    minilm_s4.append((wall, cpu))
                ua = doc["uniform_accuracy"]
                print(f"seed {seed} {wl:<6} {dev:<22} {target:.2f}x: searched {doc['accuracy']:.4f} at "
                      f"{doc['speedup_vs_dense']:.2f}x ({doc['chosen_source']}); best uniform "
                      f"{'none' if ua is None else f'{ua:.4f}'} ({doc['uniform_plan']}); {wall:.0f} s wall, "
                      f"{cpu:.0f} s CPU", flush=True)

    print("\nsummary (mean +- std over seeds", ",".join(map(str, seeds)) + "; accuracy = test accuracy for digits, "
          "mean cosine to dense embeddings for MiniLM)")
    print(f"{'workload':<8} {'device':<22} {'target':>6}  {'searched':>18}  {'best uniform':>18}  "
          f"{'speedup':>7}  verdict")
    all_ge, any_gt = True, False
    for (wl, dev, target), docs in rows.items():
        s = [d["accuracy"] for d in docs]
        u = [d["uniform_accuracy"] if d["uniform_accuracy"] is not None else 0.0 for d in docs]
        ge = all(a >= b - 1e-12 for a, b in zip(s, u))
        gt = statistics.mean(s) > statistics.mean(u)
        all_ge &= ge
        any_gt |= gt
        sp = statistics.mean(d["speedup_vs_dense"] for d in docs)
        verdict = ">= uniform" + (", strictly better" if gt else "") if ge else "BELOW uniform"
        print(f"{wl:<8} {dev:<22} {target:>5.2f}x  {_ms(s):>18}  {_ms(u):>18}  {sp:>6.2f}x  {verdict}")
    print(f"\ntarget 1 (searched >= best uniform everywhere, strictly better somewhere): "
          f"{'MET' if all_ge and any_gt else 'NOT MET'}")
    if minilm_s4:
        walls = [w for w, _ in minilm_s4]
        cpus = [c for _, c in minilm_s4]
        ok = max(walls) < MINILM_S4_LIMIT_S
        print(f"target 2 (MiniLM to 1.5x on s4-antoum under {MINILM_S4_LIMIT_S:.0f} s): wall {_ms(walls)} s, "
              f"CPU {_ms(cpus)} s per run: {'MET' if ok else 'NOT MET'}")
    return 0 if all_ge and any_gt else 1


if __name__ == "__main__":
    sys.exit(main())
