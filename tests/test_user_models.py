"""What a new user with their own model hits: every parameter accounted for, no silent skip, files that load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepkmeans import CompressConfig, LayerSpec, account, compress, load, materialize, save, shared_layers
from deepkmeans.cli import main
from deepkmeans.codec import model_file
from deepkmeans.errors import DeepKMeansError, FormatError, PlanWarning
from deepkmeans.files.checkpoints import save_checkpoint
from deepkmeans.files.models import load_compressed


class AttentionNet(nn.Module):
    """A decoder-like toy: transposed conv, a self-attention block with a packed input projection, an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 8, 3, stride=2)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x).flatten(2)[:, :, :16].transpose(1, 2).reshape(x.shape[0], -1, 16)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.mlp(h)


def _param_bits(model: nn.Module, skip: tuple[type, ...] = (nn.LayerNorm,)) -> int:
    skipped = {id(p) for m in model.modules() if isinstance(m, skip) for p in m.parameters()}
    return sum(p.numel() * 32 for p in model.parameters() if id(p) not in skipped)


def test_every_parameter_is_in_the_accounting_and_unshareable_layers_are_named() -> None:
    torch.manual_seed(0)
    model = AttentionNet()
    with pytest.warns(PlanWarning, match=r"attn \(MultiheadAttention: in_proj_weight, in_proj_bias\): not a shareable"):
        shared = compress(model, CompressConfig(layers={"*": LayerSpec(K=4)}))
    assert set(shared_layers(shared)) == {"up", "attn.out_proj", "mlp"}  # ConvTranspose2d is shared too
    acc = account(shared)
    assert acc.bits_before == _param_bits(model)  # nothing left out of the paper accounting
    assert acc.normalization_bits == 32 * 32  # LayerNorm weight + bias, reported on their own
    attn = next(la for la in acc.layers if la.name == "attn")
    assert not attn.shared and attn.bits_after == attn.bits_before == (3 * 16 * 16 + 3 * 16) * 32
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(shared(x), materialize(shared)(x))


def test_paper_ratio_and_file_ratio_agree_when_everything_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shared = compress(AttentionNet(), CompressConfig(layers={"*": LayerSpec(K=4)}))
    size = save(shared, tmp_path / "a.dkm")
    acc = account(shared, size)
    assert acc.paper_cr < 2 * acc.file_cr  # the attention projection is counted in both


def test_tied_weights_are_shared_stored_and_counted_once(tmp_path: Path) -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(200, 16)
            self.mlp = nn.Linear(16, 16)
            self.out = nn.Linear(16, 200, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, i: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.mlp(self.emb(i))))

    torch.manual_seed(0)
    model = LM()
    shared = compress(model, CompressConfig(layers={"*": LayerSpec(K=8, d=4)}))
    acc = account(shared)
    assert acc.bits_before == _param_bits(model) == (200 * 16 + 16 * 16 + 16) * 32
    assert [la.name for la in acc.layers] == ["emb", "mlp"] and acc.layers[0].note == "tied with out"
    path = tmp_path / "lm.dkm"
    size = save(shared, path)
    cm = load_compressed(path)
    assert list(cm.layers) == ["emb", "mlp"] and cm.layers["emb"].tied == ("out",)
    assert size < 200 * 16 * 4 / 4  # one coded copy, not two
    i = torch.randint(0, 200, (2, 7))
    for materialized in (True, False):
        loaded = load(path, model=LM(), materialize=materialized)
        assert torch.equal(loaded(i), shared(i))
        assert torch.equal(loaded.out.weight, loaded.emb.weight)
    loaded = load(path, model=LM())
    assert loaded.out.weight is loaded.emb.weight  # the tie is a real tie again


def test_dense_tied_weights_are_stored_once(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    model[1].weight = model[0].weight
    shared = compress(model, CompressConfig(layers={"0": None}))
    path = tmp_path / "t.dkm"
    size = save(shared, path)
    assert size < 64 * 64 * 4 * 1.5 and load_compressed(path).aliases == {"1.weight": "0.weight"}
    loaded = load(path, model=nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)))
    assert torch.equal(loaded[1].weight, model[0].weight)


def test_weight_norm_and_parametrized_layers_are_refused_by_name(tmp_path: Path) -> None:
    class Orthogonalish(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * 2.0

    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        legacy = nn.utils.weight_norm(nn.Linear(20, 10))
    modern = nn.Linear(10, 4)
    parametrize.register_parametrization(modern, "weight", Orthogonalish())
    model = nn.Sequential(legacy, modern, nn.Linear(4, 4))
    with pytest.warns(PlanWarning) as caught:
        shared = compress(model, CompressConfig(layers={"*": LayerSpec(K=2)}))
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].startswith("0: left dense: its weight is not a Parameter of the layer but computed from")
    assert "weight_g, weight_v" in messages[0] and "remove_weight_norm" in messages[0]
    assert messages[1].startswith("1: left dense: its weight is computed by a parametrization (Orthogonalish)")
    assert list(shared_layers(shared)) == ["2"]
    acc = account(shared)
    assert acc.bits_before == sum(p.numel() * 32 for p in model.parameters())


def test_large_files_load_and_the_writer_refuses_what_the_reader_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's bound scales with the file size, so honest large models load; a file the reader would
    refuse is never written. (Small bounds stand in for the 2^28-weight floor.)"""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
    monkeypatch.setattr(model_file, "MIN_WEIGHT_LIMIT", 10_000)  # below the 24,576 shared weights
    shared = compress(model, CompressConfig(layers={"*": LayerSpec(K=16)}))
    path = tmp_path / "big.dkm"
    save(shared, path)
    fresh = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
    assert torch.equal(load(path, model=fresh)[5].weight, materialize(shared)[5].weight)
    with pytest.raises(FormatError, match=r"over the 20000 this file may expand to \(pass max_weights="):
        load(path, model=fresh, max_weights=20_000)
    monkeypatch.setattr(model_file, "WEIGHTS_PER_FILE_BYTE", 1)  # now the file is too small for its weights
    with pytest.raises(DeepKMeansError, match=r"expand to 24576 weights from a \d+-byte file"):
        save(shared, tmp_path / "refused.dkm")
    assert not (tmp_path / "refused.dkm").exists()


def test_k_at_least_rows_is_said_per_layer_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "dense.ckpt"
    torch.manual_seed(0)
    from deepkmeans.models.lenet import LeNet5Caffe

    save_checkpoint(ckpt, {"model": LeNet5Caffe().state_dict(), "meta": {"model": "lenet5_caffe", "dataset": "mnist"}})
    config = tmp_path / "c.yaml"
    config.write_text("compress: {layers: {conv1: {K: 500}, '*': {K: 4}}}\n")
    assert main(["compress", str(ckpt), "--config", str(config), "-o", str(tmp_path / "m.dkm")]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "conv1" in line]
    assert warning == [
        "deepkmeans: warning: conv1: left dense: K=500 >= its 100 rows of length 5, so sharing would save nothing"
    ]
    assert "| conv1 (dense) |" in captured.out


@pytest.mark.parametrize(
    "command,target,match",
    [
        ("train", "{tmp}", "is a directory"),
        ("train", "", "the output path is empty"),
        ("train", "{tmp}/afile/dense.ckpt", "cannot write here"),
        ("train", "/proc/dense.ckpt", "cannot write here"),
        ("run", "", "out_dir must be a folder path"),
        ("run", "{tmp}/afile/run", "cannot write here"),
        ("run", "/proc/run", "cannot write here"),
    ],
)
def test_bad_output_paths_fail_in_one_line_before_any_work(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str], command: str, target: str, match: str
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    out = target.format(tmp=tmp_path)
    where = ["-o", out] if command == "train" else ["--out-dir", out]
    assert main([command, "--data-dir", str(mnist_dir), *where]) == 2
    captured = capsys.readouterr()
    assert "epoch" not in captured.out  # nothing was trained
    assert match in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    assert main(["train", "--epochs", "1", "-o", str(folder / "d.ckpt")]) == 2
    assert "cannot write here" in capsys.readouterr().err


def test_checkpoint_that_is_a_folder_or_a_raw_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder.ckpt").mkdir()
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"model": {}}))
    for path, match in ((tmp_path / "folder.ckpt", "is a directory"), (raw, "not a readable checkpoint")):
        assert main(["compress", str(path), "-o", str(tmp_path / "x.dkm")]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err


def test_finished_training_can_be_extended_and_refusals_name_the_setting(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "d.ckpt"
    base = ["train", "--data-dir", str(mnist_dir), "--device", "cpu", "-o", str(ckpt)]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "extending" in out and "pretrain epoch 2/2" in out and "pretrain epoch 1/2" not in out
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {mnist_dir}\ntrain: {{epochs: 2, lr: 0.5}}\n")
    assert main(["train", "--config", str(config), "-o", str(ckpt)]) == 2
    assert "other settings (lr 0.02 -> 0.5)" in capsys.readouterr().err


def test_no_progress_bars_in_a_log(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stderr is not a terminal here: one line per epoch on stdout, no carriage-return bar updates."""
    assert main(["train", "--data-dir", str(mnist_dir), "--epochs", "2", "-o", str(tmp_path / "d.ckpt")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "pretrain epoch 2/2" in captured.out
