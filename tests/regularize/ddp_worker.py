"""One rank of the 2-process DDP re-training check (launched by torchrun from test_distributed.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from deepkmeans import CompressConfig, DeepKMeans, LayerSpec, RegularizerConfig, distributed
from deepkmeans.config import TrainConfig
from deepkmeans.data import Batches
from deepkmeans.train import Loop, fit


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank, device = distributed.setup(torch.device("cpu"))
    torch.manual_seed(100 + rank.rank)  # different init per rank: DDP must start every rank from rank 0's
    model = SmallNet()
    ddp = distributed.wrap(model, rank, device)
    gen = torch.Generator().manual_seed(0)  # the same data on every rank; each serves its own shard
    x, y = torch.randn(96, 1, 8, 8, generator=gen), torch.randint(0, 4, (96,), generator=gen)
    train, test = Batches(x, y, 8, True, seed=1), Batches(x[:16], y[:16], 16, False)
    train.set_shard(rank.rank, rank.world_size)
    # Different k-means seeds per rank: only the rank-0 broadcast can make the assignments agree.
    config = CompressConfig(layers={"conv": LayerSpec(4, 0.5), "fc": LayerSpec(3, d=2)}, seed=rank.rank)
    dkm = DeepKMeans(model, config, RegularizerConfig("kmeans", lam=0.5, refresh_every=4))
    loop = Loop(train, test, device, is_main=rank.is_main, progress=False)
    fit(ddp, loop, TrainConfig(epochs=2, batch_size=8, lr=0.05), dkm=dkm)
    state = {"weights": model.state_dict(), "assignments": dkm.assignments, "steps": dkm.steps, "batches": len(train)}
    torch.save(state, out / f"rank{rank.rank}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
