"""jobs/gpu-check.sh: exits 0 with a message where torch sees no GPU, and its CPU-against-device
comparison works (a dry run with the device side on the CPU too: differences exactly 0)."""
import os
import subprocess

import pytest
import torch

from conftest import ROOT, mpi_env


def gpu_check(tmp_path, timeout, **env):
    return subprocess.run(["bash", str(ROOT / "jobs" / "gpu-check.sh")], capture_output=True, text=True,
                          timeout=timeout, env={**mpi_env(), "GPU_CHECK_OUT": str(tmp_path), **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs instead")
def test_gpu_check_skips_cleanly_without_gpu(tmp_path):
    proc = gpu_check(tmp_path, 120)
    assert proc.returncode == 0, proc.stderr
    assert "gpu-check: skipped: torch sees no CUDA GPU" in proc.stdout
    assert not os.listdir(tmp_path)  # nothing ran


@pytest.mark.mpi
def test_gpu_check_dry_run_compares_and_tabulates(tmp_path):
    proc = gpu_check(tmp_path, 900, GPU_CHECK_DEVICE="cpu", GPU_CHECK_METHODS="layer-parallel")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| layer-parallel | 1 |" in table and "| layer-parallel | 2 |" in table
    rows = [line for line in table.splitlines() if line.startswith("| layer-parallel")]
    assert all(line.endswith("| 0.00e+00 | yes |") for line in rows)
