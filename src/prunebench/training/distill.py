"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
Neural Network").

The student matches the teacher's softened distribution and the labels:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T
changes (the paper's Section 2). The teacher runs in eval mode without gradients on the same
(augmented) batch the student sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
            temperature: float, alpha: float) -> Tensor:
    """Hinton et al.'s loss, averaged over the batch (KL summed over classes)."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


class DistillationLoss:
    """The training loop's loss: runs the frozen teacher on each batch."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return kd_loss(logits, teacher_logits, y, self.temperature, self.alpha)
