"""The training loop's per-epoch evaluation: on the held-out validation split when there is one, so the test
set is not looked at while training; on the test set otherwise. And one step through ``train.step``."""

from __future__ import annotations

import torch
from torch import nn

from deepkmeans.config import TrainConfig
from deepkmeans.data import Batches
from deepkmeans.train import Loop, fit, step


class Untouchable(Batches):
    """Test batches that fail the test when anything iterates over them."""

    def __iter__(self):
        raise AssertionError("the test set was evaluated during training")


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_with_a_validation_split_each_epoch_is_evaluated_on_it_and_never_on_test(capsys) -> None:
    x, y = _data()
    loop = Loop(
        Batches(x, y, 16, shuffle=True),
        Untouchable(x, y, 64, shuffle=False),
        torch.device("cpu"),
        progress=False,
        val=Batches(x[:32], y[:32], 32, shuffle=False),
    )
    log = fit(nn.Linear(4, 3), loop, TrainConfig(epochs=2, batch_size=16, lr=0.1))
    assert [e.test_acc for e in log] == [None, None]
    assert all(e.val_acc is not None and e.monitored == ("validation", e.val_acc) for e in log)
    out = capsys.readouterr().out
    assert out.count("val acc") == 2 and "test acc" not in out


def test_without_one_the_test_set_is_monitored() -> None:
    x, y = _data()
    loop = Loop(Batches(x, y, 16, shuffle=True), Batches(x, y, 64, shuffle=False), torch.device("cpu"), progress=False)
    log = fit(nn.Linear(4, 3), loop, TrainConfig(epochs=1, batch_size=16, lr=0.1))
    assert log[0].val_acc is None and log[0].monitored == ("test", log[0].test_acc)


def test_step_adds_the_penalty_in_the_loss_and_steps_the_lifecycle() -> None:
    class Penalty:
        in_loss, steps = True, 0

        def __init__(self, weight: nn.Parameter) -> None:
            self.weight = weight

        def penalty(self) -> torch.Tensor:
            return 10.0 * self.weight.pow(2).sum()

        def step(self) -> None:
            self.steps += 1

    model = nn.Linear(2, 1, bias=False)
    nn.init.ones_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dkm = Penalty(model.weight)
    added = step(model(torch.zeros(1, 2)).sum(), opt, dkm)  # the task loss has no gradient: only the penalty's
    assert added == 20.0 and dkm.steps == 1
    assert torch.allclose(model.weight, torch.full((1, 2), 1 - 0.01 * 20.0))
