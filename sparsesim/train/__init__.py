"""Stage 4: training cost. Whole training runs (dense, dense-to-sparse, static and dynamic
sparse-to-sparse, 2:4) as training-step IR ops, costed through `sparsesim.run.estimate`."""

from sparsesim.train.run import (
    SUMMARY_COLUMNS,
    TrainConfig,
    TrainTables,
    train,
    train_tables,
)

__all__ = ["SUMMARY_COLUMNS", "TrainConfig", "TrainTables", "train", "train_tables"]
