"""Pipeline stages leave what they are given as it was, except what their name says they change."""

from pathlib import Path

import torch

from deepkmeans.config import CompressConfig, LayerSpec, RetrainConfig, RunConfig, TrainConfig
from deepkmeans.pipeline import compress_and_measure, pretrain, retrain, start_session


def test_retrain_keeps_the_sessions_batches_and_compress_keeps_the_model(tmp_path: Path, mnist_dir: Path) -> None:
    cfg = RunConfig(
        data_dir=str(mnist_dir),
        device="cpu",
        train=TrainConfig(epochs=1, batch_size=32),
        retrain=RetrainConfig(epochs=1, batch_size=16, lam=0.1, refresh_every=4),
        compress=CompressConfig(layers={"conv*": LayerSpec(4), "fc1": LayerSpec(8, 0.5, d=5)}),
    )
    session = start_session(cfg, cfg.train.batch_size, progress=False)
    model, _ = pretrain(cfg, session, tmp_path / "pre.ckpt")
    log, dkm = retrain(cfg, model, session, tmp_path / "re.ckpt", {"model": cfg.model})
    assert session.loop.train.batch_size == 32 and len(log) == 1 and dkm.steps == len(session.loop.train) * 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared, m = compress_and_measure(model, cfg, session.loop, tmp_path / "m.dkm", {"name": cfg.model})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert m.bitwise_equal and m.file_bytes == (tmp_path / "m.dkm").stat().st_size and m.paper_cr > 1
