"""Knowledge distillation (Hinton et al., 2015): the compressed student also matches the dense teacher's
softened outputs, which carry more than the one-hot labels (how alike the classes look to the teacher).

Tensors only: the training loop (:func:`deepkmeans.train.fit`) runs the teacher and calls this.
"""

from __future__ import annotations

import torch
from torch import nn


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch. The ``T^2`` keeps its
    gradient's scale independent of ``T`` (the softened gradient shrinks as ``1 / T^2``)."""
    student = nn.functional.log_softmax(student_logits / temperature, dim=1)
    teacher = nn.functional.log_softmax(teacher_logits / temperature, dim=1)
    kl = nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """``(1 - weight) * cross_entropy(student, targets) + weight * soft_target_kl(student, teacher, T)``; no
    gradient reaches the teacher's logits."""
    task = nn.functional.cross_entropy(student_logits, targets)
    if weight == 0:
        return task
    return (1 - weight) * task + weight * soft_target_kl(student_logits, teacher_logits.detach(), temperature)
