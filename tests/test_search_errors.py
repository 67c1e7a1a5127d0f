"""Bad search configs give one clear SearchError, and a failing evaluate keeps completed trials."""

from __future__ import annotations

import math

import pytest
import torch

from sparsesim.core.errors import SearchError
from sparsesim.search import optuna_search as osr
from sparsesim.search.problem import SearchProblem
from sparsesim.search.runner import SearchConfig, build_problem, run_search
from sparsesim.sparsity.masks import check_mask
from sparsesim.sparsity.plans import load_plan

DEVICE = "arm-cortex-a78"


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSESIM_CACHE", str(tmp_path_factory.mktemp("cache")))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield build_problem(SearchConfig(workload="digits:batch=64", device=DEVICE))
        finally:
            torch.set_num_threads(threads)


def test_unknown_device_names_it(tmp_path):
    with pytest.raises(SearchError, match="--device no-such-chip"):
        run_search(SearchConfig(workload="digits", device="no-such-chip", out=str(tmp_path)))


def test_impossible_target_says_what_is_reachable(problem, tmp_path):
    cfg = SearchConfig(workload="digits", device=DEVICE, target_speedup=1000.0, out=str(tmp_path))
    with pytest.raises(SearchError, match=r"impossible target.*fastest plan in the space.*x of dense"):
        run_search(cfg, problem=problem)


def test_conflicting_or_bad_options(problem, tmp_path):
    with pytest.raises(SearchError, match="not both"):
        run_search(SearchConfig("digits", DEVICE, target_speedup=2, max_accuracy_drop=0.01, out=str(tmp_path)),
                   problem=problem)
    with pytest.raises(SearchError, match="--algorithm"):
        run_search(SearchConfig("digits", DEVICE, algorithm="annealing", out=str(tmp_path)), problem=problem)


def test_evaluate_raising_on_the_dense_model_is_reported(problem):
    def broken(model):
        raise RuntimeError("dataset missing")

    wl_model = problem.model
    from sparsesim.core.ir import Workload

    wl = Workload(name="digits", ops=problem.ops, model=wl_model)
    with pytest.raises(SearchError, match="evaluate \\(dense model\\) raised RuntimeError: dataset missing"):
        SearchProblem(wl, problem.device, evaluate=broken)


class FailAfter:
    """Works for `n` calls, then raises or returns NaN (picklable, like a user's evaluate)."""

    def __init__(self, inner, n: int, mode: str) -> None:
        self.inner, self.n, self.mode, self.calls = inner, n, mode, 0

    def __call__(self, model) -> float:
        self.calls += 1
        if self.calls > self.n:
            if self.mode == "raise":
                raise ValueError("labels out of range")
            return math.nan
        return self.inner(model)


@pytest.mark.parametrize("mode,message", [("raise", "evaluate raised ValueError: labels out of range"),
                                          ("nan", "evaluate returned nan")])
def test_failing_evaluate_stops_with_search_error_and_keeps_completed_trials(problem, tmp_path, mode, message):
    good = problem.evaluate
    problem.evaluate = FailAfter(good, 3, mode)
    cfg = osr.StudyConfig(storage=str(tmp_path / "s.journal"), study_name="s", n_trials=8, seed=0)
    try:
        with pytest.raises(SearchError, match=message):
            osr.optimize(problem, cfg)
    finally:
        problem.evaluate = good
    study = osr.open_study(cfg)
    c = osr.counts(study)
    assert c["COMPLETE"] == 3 and c["FAIL"] == 1
    (failed,) = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert message in failed.user_attrs["error"]
    # fixed evaluate: the same study resumes to exactly 8 complete trials
    osr.optimize(problem, cfg)
    assert osr.counts(osr.open_study(cfg))["COMPLETE"] == 8


def test_search_end_to_end_saves_a_loadable_plan_and_model(problem, tmp_path):
    doc = run_search(SearchConfig("digits", DEVICE, target_speedup=2.0, out=str(tmp_path)), problem=problem)
    assert doc["latency_s"] <= doc["target"]["latency_budget_s"] * (1 + 1e-9)
    assert doc["speedup_vs_dense"] >= 2.0 - 1e-9
    assert doc["uniform_accuracy"] is None or doc["accuracy"] >= doc["uniform_accuracy"]
    plan = load_plan(doc["files"]["plan"])
    assert plan.masks
    state = torch.load(doc["files"]["model"], weights_only=True)
    for name, mask in plan.masks.items():
        pattern = plan.pattern_for(name)
        assert bool((state[name][~mask.bool()] == 0).all())  # pruned weights are zero in the export
        if pattern.kind in ("nm", "block"):
            check_mask(mask, pattern, layer=name)
    # the reported accuracy is the real accuracy of the exported model
    model = problem.model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        assert problem.evaluate(model) == pytest.approx(doc["accuracy"])
    finally:
        model.load_state_dict(saved)


# ---------------------------------------------------------------- positive controls

def test_channel_groups_prune_producer_rows_and_consumer_columns_together(problem):
    choice = dict(problem.space.dense_choice(), **{"group:conv1": "channel:0.5", "group:fc1": "channel:0.75"})
    masks = problem.masks(choice)
    rows_kept = masks["conv1.weight"].reshape(16, -1).any(1)
    cols_kept = masks["conv2.weight"].any(0).any(-1).any(-1)  # per input channel of conv2
    assert int(rows_kept.sum()) == 8 and torch.equal(rows_kept, cols_kept)
    fc1_rows = masks["fc1.weight"].any(1)
    assert int(fc1_rows.sum()) == 16 and torch.equal(fc1_rows, masks["fc2.weight"].any(0))
    # the pruned ops are costed as the smaller dense ops they become
    assert problem.cost(choice).latency_s < problem.dense_cost.latency_s
    # and the real accuracy is measured with both sides pruned (it moves)
    assert problem.accuracy(choice) != problem.dense_accuracy


def test_signals_are_zero_for_dense_and_grow_with_pruning(problem):
    from sparsesim.search.accuracy import layer_inputs, masked, reconstruction_error
    from sparsesim.sparsity.masks import build_mask
    from sparsesim.sparsity.patterns import make_pattern

    assert problem.sensitivity(problem.space.dense_choice(), "fidelity") == pytest.approx(0.0, abs=1e-9)
    w = problem.model.fc1.weight.detach()
    x = layer_inputs(problem.model, ["fc1"], problem.calibration)["fc1"]
    fid, rec = [], []
    for density in (1.0, 0.5, 0.1):  # nested magnitude masks
        mask = build_mask(w, make_pattern("unstructured", density))
        with masked(problem.model, {"fc1.weight": mask}) as m:
            fid.append(problem.fidelity.loss(m))
        rec.append(reconstruction_error(problem.model.fc1, x, mask))
    assert fid[0] == pytest.approx(0.0, abs=1e-9) and 0 < fid[1] < fid[2]
    assert rec[0] == pytest.approx(0.0, abs=1e-9) and 0 < rec[1] < rec[2]


def test_bn_recalibration_hook_recomputes_running_stats():
    from sparsesim.search.accuracy import masked, recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).eval()
    x = torch.randn(64, 4) * 3 + 1
    before = model[1].running_mean.clone()
    mask = torch.ones(8, 4)
    mask[:4] = 0
    with masked(model, {"0.weight": mask}, recovery=recalibrate_bn(x)) as m:
        expected = torch.nn.functional.linear(x, m[0].weight, m[0].bias).mean(0)
        assert torch.allclose(m[1].running_mean, expected, atol=1e-5)
        assert bool((m[0].weight[:4] == 0).all())
    assert torch.equal(model[1].running_mean, before)  # restored afterwards


def test_ctrl_c_leaves_no_optuna_tracebacks():
    """A Ctrl-C inside a trial: Optuna's 'Trial N failed' warnings (with a traceback) are
    dropped, so the CLI's one 'interrupted' line is all that is printed; other warnings stay."""
    import logging
    import sys

    osr._quiet_interrupts()
    handlers = logging.getLogger("optuna").handlers
    assert handlers, "optuna installs its default handler"

    def record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = None
        if exc is not None:
            try:
                raise exc
            except BaseException:
                info = sys.exc_info()
        return logging.LogRecord("optuna.study._optimize", logging.WARNING, __file__, 1, msg, None, info)

    for h in handlers:
        assert not h.filter(record("Trial 3 failed with parameters: {} because of the following error: "
                                   "KeyboardInterrupt().", KeyboardInterrupt()))
        assert not h.filter(record("Trial 3 failed with value None."))
        assert h.filter(record("some other optuna warning"))
        # a stop that cut Optuna's journal lock release short: the release's own unlink fails and
        # its FileNotFoundError is logged as the trial's error, the stop behind it
        assert not h.filter(record("Trial 3 failed with parameters: {} because of the following error: "
                                   "FileNotFoundError(2, 'No such file or directory').", _raised_while(SystemExit(143))))
        assert h.filter(record("Trial 3 failed: FileNotFoundError", FileNotFoundError(2, "gone")))


def _raised_while(stop: BaseException) -> FileNotFoundError:
    """A FileNotFoundError raised while `stop` unwound (its __context__, as Python sets it)."""
    try:
        try:
            raise stop
        except BaseException:
            raise FileNotFoundError(2, "No such file or directory")  # noqa: B904 (the context is the point)
    except FileNotFoundError as e:
        return e


def test_asking_for_trials_runs_optuna_too_unless_an_algorithm_is_named():
    from sparsesim.cli import build_parser
    from sparsesim.cli.search_cmd import default_algorithm

    parser, _ = build_parser()
    base = ["search", "digits", "--device", DEVICE]
    assert default_algorithm(parser.parse_args(base)) == "dp"
    for extra in (["--trials", "8"], ["--workers", "2"], ["--storage", "sqlite:///x.db"]):
        args = parser.parse_args(base + extra)
        assert args.algorithm is None and default_algorithm(args) == "both"
    assert parser.parse_args(base + ["--trials", "8", "--algorithm", "dp"]).algorithm == "dp"
