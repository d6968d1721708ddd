"""Two CPU processes (gloo) re-train with DDP and the k-means regularizer; they must stay identical."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_rank_gloo_retraining_keeps_ranks_identical(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(tmp_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **_env()})
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["batches"] == r1["batches"] == 6  # 12 batches split evenly between the ranks
    assert r0["steps"] == r1["steps"] == 12 and r0["steps"] > 4  # several F refreshes happened
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
    for name in r0["assignments"]:
        assert torch.equal(r0["assignments"][name], r1["assignments"][name]), name


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
