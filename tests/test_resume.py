"""Killing ``deepkmeans train`` loses at most the epoch in progress: rerunning the command resumes bit-exactly.

The child processes run with one CPU thread, so float results do not depend on how work is split
between threads and an interrupted-and-resumed run can be compared bitwise with an uninterrupted one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepkmeans.files.checkpoints import load_checkpoint
from tests.conftest import make_mnist_dir

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 2000  # about a second per epoch on one core: time to kill the run after the first checkpoint
EPOCHS = 4
FIRST_EPOCH_TIMEOUT = 300.0  # seconds; startup + one epoch on a slow, busy machine
RUN_TIMEOUT = 600.0
EPOCH_LINE = re.compile(rf"^pretrain epoch (\d+)/{EPOCHS}:", re.MULTILINE)


def _env() -> dict[str, str]:
    """One thread for bitwise-reproducible CPU arithmetic; unbuffered so a killed run's log is complete."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _train_cmd(config: Path, checkpoint: Path) -> list[str]:
    return [
        sys.executable,
        *("-m", "deepkmeans", "train", "--config", str(config), "-o", str(checkpoint), "--epochs", str(EPOCHS)),
    ]


def _run(cmd: list[str], log: Path) -> list[int]:
    """Run a training command to completion; returns the epochs it trained (from its output)."""
    with log.open("w") as out, log.with_suffix(".err").open("w") as err:
        result = subprocess.run(cmd, stdout=out, stderr=err, env=_env(), cwd=ROOT, timeout=RUN_TIMEOUT, check=False)
    assert result.returncode == 0, log.with_suffix(".err").read_text()[-3000:]
    return [int(e) for e in EPOCH_LINE.findall(log.read_text())]


def _kill_after_first_checkpoint(cmd: list[str], checkpoint: Path, log: Path) -> None:
    """Start training, wait for its first checkpoint, then SIGKILL it (no chance to clean up)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        try:
            deadline = time.monotonic() + FIRST_EPOCH_TIMEOUT
            while not checkpoint.exists():
                assert proc.poll() is None, f"training ended before its first checkpoint:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within the time limit"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"training finished before it could be killed:\n{log.read_text()}"


@pytest.mark.slow
def test_killed_training_resumes_bit_exactly(tmp_path: Path) -> None:
    data = make_mnist_dir(tmp_path / "mnist", n_train=N_TRAIN, n_test=200)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {data}\ndevice: cpu\nseed: 3\ntrain: {{epochs: {EPOCHS}, batch_size: 64, lr: 0.05}}\n"
    )
    resumed, reference = tmp_path / "resumed.ckpt", tmp_path / "reference.ckpt"

    _kill_after_first_checkpoint(_train_cmd(config, resumed), resumed, tmp_path / "killed.log")
    saved = load_checkpoint(resumed)  # atomic writes: the file is complete even though the run was killed
    done = int(saved["epoch"])
    assert 1 <= done < EPOCHS
    assert [h["epoch"] for h in saved["history"]] == list(range(1, done + 1))

    assert _run(_train_cmd(config, resumed), tmp_path / "resume.log") == list(range(done + 1, EPOCHS + 1))
    assert _run(_train_cmd(config, reference), tmp_path / "reference.log") == list(range(1, EPOCHS + 1))

    got, want = load_checkpoint(resumed), load_checkpoint(reference)
    assert got["epoch"] == want["epoch"] == EPOCHS
    assert got["model"].keys() == want["model"].keys()
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"{name} differs after resuming"
    got_opt, want_opt = got["optimizer"]["state"], want["optimizer"]["state"]
    assert got_opt.keys() == want_opt.keys()
    for key, state in want_opt.items():
        assert torch.equal(got_opt[key]["momentum_buffer"], state["momentum_buffer"]), f"momentum {key} differs"
    assert got["scheduler"] == want["scheduler"]
    timeless = [{k: v for k, v in h.items() if k != "seconds"} for h in want["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in got["history"]] == timeless
