"""Losses: tensors in, scalar out."""

from recxfer.losses.alignment import (
    AlignmentConfig,
    AlignmentLoss,
    ContrastiveAlignmentLoss,
    CORALLoss,
    DomainAdversarialLoss,
    GradientReversal,
    MMDLoss,
    contrastive_alignment_loss,
    coral_loss,
    domain_adversarial_loss,
    grad_reverse,
    median_bandwidths,
    mmd_loss,
)
from recxfer.losses.ranking import BPRLoss, InBatchSoftmaxLoss, bpr_loss, in_batch_softmax_loss

__all__ = [
    "BPRLoss",
    "InBatchSoftmaxLoss",
    "bpr_loss",
    "in_batch_softmax_loss",
    # domain alignment
    "AlignmentConfig",
    "AlignmentLoss",
    "CORALLoss",
    "ContrastiveAlignmentLoss",
    "DomainAdversarialLoss",
    "GradientReversal",
    "MMDLoss",
    "contrastive_alignment_loss",
    "coral_loss",
    "domain_adversarial_loss",
    "grad_reverse",
    "median_bandwidths",
    "mmd_loss",
]
