"""One cost model per hardware family (GPU, CPU, FPGA, S4-style engine)."""
