"""Run a study's trials on an existing Dask cluster (`--dask-scheduler ADDRESS`).

Each Dask task is one search worker (`study.run_worker`) on the shared study, so the
exactly-N / resume guarantees are the same as for local processes. The storage must be reachable
from every Dask worker: a journal file on a shared filesystem, or a database URL. dask and
distributed are the optional extra `cluster`, imported only here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from sparsesim.core.errors import SearchError
from sparsesim.search.study import StudyConfig, journal_path_of, run_worker


def _task(blob: bytes, cfg: StudyConfig, worker: int) -> int:
    import torch

    torch.set_num_threads(1)
    return run_worker(pickle.loads(blob), cfg, worker=worker)


def run_on_dask(problem, cfg: StudyConfig, address: str, workers: int) -> int:
    """Submit one worker task per Dask worker (or `workers` tasks when > 1); returns trials run."""
    from sparsesim.core.extras import require

    Client = require("distributed", "cluster", "search --dask-scheduler").Client
    path = journal_path_of(cfg.storage)
    if path is not None:  # workers resolve paths on their side: hand them an absolute one
        cfg = StudyConfig(str(Path(path).resolve()), cfg.study_name, cfg.n_trials, cfg.seed, cfg.sampler)
    try:
        client = Client(address, timeout=30) if isinstance(address, str) else Client(address)
    except (OSError, TimeoutError, ValueError) as e:
        raise SearchError(f"--dask-scheduler {address}: cannot connect ({e})") from e
    with client:
        n = workers if workers > 1 else max(1, len(client.scheduler_info().get("workers", {})))
        blob = client.scatter(pickle.dumps(problem), broadcast=True)
        futures = [client.submit(_task, blob, cfg, i, pure=False) for i in range(n)]
        return sum(client.gather(futures))
