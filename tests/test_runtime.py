"""What the machine decides: precision (with the probe's answer injected), threads."""

import os
import subprocess
import sys

import pytest
import torch

from transformerkit import runtime
from transformerkit.errors import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine: native bf16 or not, and how much faster the probe finds bf16."""
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)

    def pretend(native: bool, speedup: float = 1.0):
        monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu": native)
        monkeypatch.setattr(runtime, "bf16_speedup", lambda width, device_type="cpu": speedup)

    return pretend


def test_auto_picks_bf16_only_where_native_and_faster(machine):
    machine(native=True, speedup=3.0)
    assert runtime.choose_precision("auto", "cpu", 128).name == "bf16"
    machine(native=True, speedup=0.9)  # native but not faster at this width (small matmuls)
    choice = runtime.choose_precision("auto", "cpu", 128)
    assert choice.name == "fp32" and "0.90x" in choice.reason
    machine(native=False, speedup=3.0)  # emulated bf16 is never chosen, whatever a probe says
    choice = runtime.choose_precision("auto", "cpu", 128)
    assert choice.name == "fp32" and "no native bfloat16" in choice.reason


def test_auto_on_cuda_follows_the_gpu(machine):
    machine(native=True, speedup=4.0)
    assert runtime.choose_precision("auto", "cuda", 768).name == "bf16"
    machine(native=False)
    assert runtime.choose_precision("auto", "cuda", 768).name == "fp32"


def test_an_explicit_request_and_the_environment_win(machine, monkeypatch):
    machine(native=False)
    assert runtime.choose_precision("bf16", "cpu", 64).name == "bf16"
    machine(native=True, speedup=3.0)
    assert runtime.choose_precision("fp32", "cpu", 64).name == "fp32"
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp32")
    choice = runtime.choose_precision("bf16", "cpu", 64)
    assert choice.name == "fp32" and runtime.PRECISION_ENV in choice.reason
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp16")
    with pytest.raises(ConfigError, match=runtime.PRECISION_ENV):
        runtime.choose_precision("auto", "cpu", 64)


def test_the_environment_fixes_the_float32_matmul_libraries(monkeypatch):
    """$TRANSFORMERKIT_MATMUL overrides the timed choices between oneDNN and MKL, for products with a weight and
    for weight gradients (conftest sets it for the whole suite, so that processes compared to the last digit
    multiply alike); a bad value is a ConfigError."""
    from transformerkit.nn.linear import can_pack_weights

    probes = (runtime.onednn_matmul_pays, runtime.onednn_weight_gradient_pays)

    def answer(value):
        monkeypatch.setenv(runtime.MATMUL_ENV, value)
        for probe in probes:
            probe.cache_clear()
        try:
            return tuple(probe() for probe in probes), runtime.float32_libraries()
        finally:
            for probe in probes:
                probe.cache_clear()

    onednn = can_pack_weights()
    assert answer("default") == ((False, False), "default")
    assert answer("split") == ((onednn, False), "split" if onednn else "default")
    assert answer("onednn") == ((onednn, onednn), "onednn" if onednn else "default")
    (products, gradients), libraries = answer("auto")  # timed: any answer is right, on some machine
    assert (products or not gradients) and libraries in runtime.FLOAT32_LIBRARIES
    with pytest.raises(ConfigError, match=runtime.MATMUL_ENV):
        answer("mkl")


def test_native_bf16_reads_the_processor_flags(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})
    assert not runtime.native_bf16("cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert runtime.native_bf16("cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"asimd", "bf16"})  # ARM's BF16 extension
    assert runtime.native_bf16("cpu")


def test_the_probe_measures_a_ratio():
    speedup = runtime.bf16_speedup(64)
    assert 0.0 < speedup < 100.0


def test_threads_follow_omp_num_threads_then_affinity(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_threads_reason", None)  # restored afterwards: other tests read it
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert runtime.choose_threads() == (1, "OMP_NUM_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share the four cores
        n, reason = runtime.choose_threads()
        assert n == 2 and "4 usable cores / 2 processes" in reason
        assert torch.get_num_threads() == 2 and runtime.threads_line().startswith("2 threads")
    finally:
        torch.set_num_threads(before)


def test_compiling_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    import shutil

    import transformerkit as tk
    from transformerkit.nn.block import compile_blocks

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++ compiler" in runtime.compile_unavailable("cpu")
    assert runtime.compile_unavailable("cuda") is None  # on a GPU inductor writes Triton, not C++
    model = tk.build_model(tk.preset("gpt-tiny", vocab_size=40))
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        compile_blocks(model)


FAULTS_OF_A_REPEATED_STEP = """
import resource, torch
from transformerkit import runtime
runtime.keep_freed_memory()
size = 64 * 2**20 // 4  # 64 MB of float32: over glibc's 32 MB ceiling for the mmap threshold
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(size).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(3):  # the heap grows and settles (seen: one of the first two or three steps may still fault)
    faults_of_one_step()
print(max(faults_of_one_step() for _ in range(3)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_block_larger_than_the_mmap_limit_is_reused_without_page_faults():
    """Attention's scores at the shakespeare-char size are 100 MB: larger than any mmap threshold glibc
    allows, so only turning mmap off keeps them for the next step. Run in a fresh process, as a training run
    starts: a test worker's heap holds whatever earlier tests freed (past the trim threshold, a free trims)."""
    run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REPEATED_STEP], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert int(run.stdout) < 1000  # a fresh mmap faults every one of its 16,384 pages in again
