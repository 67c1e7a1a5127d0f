"""Devices are identified by content: a what-if copy of a file keeps its row in a comparison,
the same device named twice is costed once."""

from __future__ import annotations

import shutil

from sparsesim.hw.devices import builtin_device_files, load_device
from sparsesim.run.estimate import compare_tables, resolve_devices

SPEC = "gemm:M=16,N=8192,K=8192,dtype=fp16"


def test_same_content_same_key_edited_content_new_key(tmp_path):
    a = load_device("a100-sxm4-80gb")
    assert load_device("a100-sxm4-80gb").key == a.key
    copy = tmp_path / "a100-sxm4-80gb.toml"
    shutil.copy(builtin_device_files()["a100-sxm4-80gb"], copy)
    assert load_device(str(copy)).key == a.key  # one file under two paths: one device
    text = copy.read_text().replace("dram_bandwidth = { value = 2039", "dram_bandwidth = { value = 4078", 1)
    assert text != copy.read_text()
    copy.write_text(text)
    assert load_device(str(copy)).key != a.key


def test_what_if_copy_keeps_its_row(tmp_path):
    copy = tmp_path / "a100-sxm4-80gb.toml"
    shutil.copy(builtin_device_files()["a100-sxm4-80gb"], copy)
    copy.write_text(copy.read_text().replace("dram_bandwidth = { value = 2039", "dram_bandwidth = { value = 4078", 1))
    devs = resolve_devices(["a100-sxm4-80gb", str(copy), "a100-sxm4-80gb"])
    assert len(devs) == 2 and devs[0].name != devs[1].name
    summary = compare_tables(SPEC, devs, ["dense"]).summary
    assert len(summary) == 2
    lat = dict(zip(summary["device"], summary["latency_s"]))
    assert lat[devs[1].name] < lat[devs[0].name]  # twice the DRAM bandwidth on a memory-bound GEMM
