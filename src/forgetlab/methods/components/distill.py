"""Knowledge distillation: KL(teacher || student) at temperature T over groups of output columns."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                      groups: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over examples, summed over groups, of KL(softmax(teacher_g / T) || softmax(student_g / T)).

    A group is a list of class columns distilled as one distribution (all old classes in a
    class-incremental stream; each old task's classes in a task-incremental one); None: all columns
    (a language model's next-token distribution).
    """
    if groups is None:
        s = F.log_softmax(student.float() / temperature, dim=-1)
        t = F.log_softmax(teacher.float() / temperature, dim=-1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean")
    total = student.new_zeros(())
    for cols in groups:
        s = F.log_softmax(student[:, cols] / temperature, dim=-1)
        t = F.log_softmax(teacher[:, cols] / temperature, dim=-1)
        total = total + F.kl_div(s, t, log_target=True, reduction="batchmean")
    return total
