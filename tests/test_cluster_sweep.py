"""`compare` and `report` with `--dask-scheduler`: each (workload, device) cell is a task on a Dask
cluster, and the tables are the ones a local run gives."""

from __future__ import annotations

import json

import pytest

from sparsesim.core.errors import SparsesimError
from sparsesim.run import estimate

distributed = pytest.importorskip("distributed")

SPEC = "gemm:M=64,N=256,K=512,dtype=fp16"
DEVICES = ["a100-sxm4-80gb", "arm-cortex-a78", "s4-antoum"]
PLANS = ["dense", "2:4", "unstructured:0.9"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as c:
        yield c


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSESIM_CACHE", str(tmp_path / "cache"))


def test_cells_on_the_cluster_give_the_local_tables(cluster):
    local = estimate.compare_tables(SPEC, DEVICES, PLANS)
    remote = estimate.compare_tables(SPEC, DEVICES, PLANS, dask_scheduler=cluster.scheduler_address)
    assert list(remote.per_op["device"].unique()) == DEVICES
    assert remote.per_op.equals(local.per_op)
    assert remote.summary.equals(local.summary)


def test_a_sweep_of_workloads_goes_to_the_cluster_at_once(cluster):
    specs = [SPEC, "conv:batch=1,cin=16,cout=32,h=8,w=8,kernel=3,dtype=fp16"]
    local = estimate.compare_many(specs, DEVICES, PLANS)
    remote = estimate.compare_many(specs, DEVICES, PLANS, dask_scheduler=cluster.scheduler_address)
    assert len(remote) == 2
    for a, b in zip(local, remote):
        assert b.per_op.equals(a.per_op) and b.summary.equals(a.summary)


def test_compare_and_report_verbs_take_the_scheduler(cluster, cli, tmp_path):
    rc, out, err = cli("--no-cache", "compare", SPEC, "--devices", ",".join(DEVICES), "--plans", ",".join(PLANS),
                       "--json", "--dask-scheduler", cluster.scheduler_address)
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert {r["device"] for r in rows} == set(DEVICES) and len(rows) == len(DEVICES) * len(PLANS)
    rc, out, err = cli("report", SPEC, SPEC.replace("M=64", "M=128"), "--devices", DEVICES[0], "--plans", "2:4",
                       "--no-serving", "--no-training",
                       "--out", str(tmp_path / "r"), "--quiet", "--dask-scheduler", cluster.scheduler_address)
    assert rc == 0, err
    assert (tmp_path / "r" / "index.html").exists()


def test_unreachable_scheduler_and_in_memory_models_are_one_line(monkeypatch):
    monkeypatch.setattr(estimate, "DASK_CONNECT_TIMEOUT_S", 2)
    with pytest.raises(SparsesimError, match="--dask-scheduler tcp://127.0.0.1:9: cannot connect"):
        estimate.compare_tables(SPEC, DEVICES[:1], ["dense"], dask_scheduler="tcp://127.0.0.1:9")
    from sparsesim.tracing.workloads import load_workload

    with pytest.raises(SparsesimError, match="must be a spec"):
        estimate.compare_tables(load_workload(SPEC), DEVICES[:1], ["dense"], dask_scheduler="tcp://127.0.0.1:9")
