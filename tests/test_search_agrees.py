"""The search costs plans through the one costing path: the speedup it reports for every plan it
returns equals `compare` on that plan (the saved file for the chosen one)."""

from __future__ import annotations

import pytest
import torch

from sparsesim.run.estimate import compare
from sparsesim.search.baselines import uniform_choices
from sparsesim.search.runner import SearchConfig, build_problem, run_search

TOL = 0.01


def _search(workload: str, device: str, out, **kw):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = SearchConfig(workload=workload, device=device, out=str(out), **kw)
        problem = build_problem(cfg)
        return problem, run_search(cfg, problem=problem)
    finally:
        torch.set_num_threads(threads)


def _check_agreement(problem, doc, workload: str, device: str) -> None:
    # the chosen plan, as saved, through the public compare on a freshly traced workload
    row = compare(workload, device, [doc["files"]["plan"]]).iloc[0]
    assert row["speedup_vs_dense"] == pytest.approx(doc["speedup_vs_dense"], rel=TOL)
    assert row["latency_s"] == pytest.approx(doc["latency_s"], rel=TOL)
    assert doc["check"]["agrees"]
    assert doc["check"]["compare_speedup"] == pytest.approx(doc["speedup_vs_dense"], rel=TOL)
    # every plan on the front and every uniform baseline, as Plans with their masks
    uniform = uniform_choices(problem.space)
    plans = [(problem.plan(r["choice"], name=f"front {i}: {r['source']}"), r) for i, r in enumerate(doc["front"])]
    plans += [(problem.plan(uniform[r["plan"]], name=r["source"]), r) for r in doc["uniform"]]
    assert len(plans) >= 2
    summary = compare(problem.workload, device, [p for p, _ in plans]).set_index("plan")
    for plan, r in plans:
        assert summary.loc[plan.name, "speedup_vs_dense"] == pytest.approx(r["speedup_vs_dense"], rel=TOL), plan.name


@pytest.mark.parametrize(("device", "target"), [("arm-cortex-a78", 1.5), ("xeon-sapphire-rapids", 1.1)])
def test_digits_search_speedups_equal_compare(device, target, tmp_path):
    problem, doc = _search("digits:batch=64", device, tmp_path, target_speedup=target)
    _check_agreement(problem, doc, "digits:batch=64", device)


@pytest.mark.slow
def test_minilm_search_on_s4_speedups_equal_compare(tmp_path):
    """MiniLM on the S4 engine, over a smaller space (three patterns, one channel level) so the
    per-unit sensitivities stay within a minute."""
    from sparsesim.search.problem import SearchProblem
    from sparsesim.search.runner import search_task_for
    from sparsesim.sparsity.patterns import parse_pattern
    from sparsesim.tracing.workloads import load_workload

    device = "s4-antoum"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wl = load_workload("minilm")
        task = search_task_for("minilm", wl.model, seed=0, evaluate=None)
        from sparsesim.hw.devices import load_device

        problem = SearchProblem(wl, load_device(device), evaluate=task.evaluate, fidelity=task.fidelity,
                                groups=task.groups, calibration=task.calibration, channel_densities=(0.5,),
                                patterns=[parse_pattern(p) for p in ("dense", "2:4", "unstructured:0.7")])
        cfg = SearchConfig(workload="minilm", device=device, out=str(tmp_path), target_speedup=1.2,
                           signal="reconstruction")
        doc = run_search(cfg, problem=problem)
    finally:
        torch.set_num_threads(threads)
    _check_agreement(problem, doc, "minilm", device)
