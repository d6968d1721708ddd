"""Pipeline stages leave what they are given as it was, except what their name says they change."""

from pathlib import Path

import torch

from deepkmeans.config import CompressConfig, LayerSpec, RetrainConfig, RunConfig, TrainConfig
from deepkmeans.job.stages import compress_and_measure, pretrain, retrain, start_session


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


def test_a_run_clusters_each_layer_once_per_weight_state_and_warns_once(
    tmp_path: Path, mnist_dir: Path, monkeypatch
) -> None:
    """The pre-trained weights are clustered once (hardness report, the penalty's first F and the compressed
    file share it), each epoch's hardness report once, and the final file reuses the last epoch's; a layer
    left dense is said once."""
    import warnings

    from deepkmeans import lifecycle
    from deepkmeans.errors import PlanWarning
    from deepkmeans.job import run as job
    from deepkmeans.regularize import regularizer

    calls: list[int] = []

    def counting(original):
        def wrapper(rows, *args, **kwargs):
            calls.append(rows.shape[0])
            return original(rows, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(lifecycle, "cluster_rows", counting(lifecycle.cluster_rows))
    monkeypatch.setattr(regularizer, "cluster_rows", counting(regularizer.cluster_rows))
    cfg = RunConfig(
        data_dir=str(mnist_dir),
        device="cpu",
        out_dir=str(tmp_path / "run"),
        train=TrainConfig(epochs=1, batch_size=32),
        retrain=RetrainConfig(epochs=2, batch_size=32, lam=0.1, refresh_every=10_000),
        compress=CompressConfig(layers={"conv1": LayerSpec(500), "conv2": LayerSpec(4), "fc*": LayerSpec(8, d=5)}),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job.run(cfg, progress=False)
    shared_layers = 3  # conv1 is left dense: K=500 >= its 100 rows
    assert len(calls) == shared_layers * (1 + cfg.retrain.epochs)
    notes = [str(w.message) for w in caught if issubclass(w.category, PlanWarning)]
    assert len(notes) == 1 and notes[0].startswith("conv1: left dense")
