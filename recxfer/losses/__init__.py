"""Losses: tensors in, scalar out."""

from recxfer.losses.ranking import BPRLoss, InBatchSoftmaxLoss, bpr_loss, in_batch_softmax_loss

__all__ = ["BPRLoss", "InBatchSoftmaxLoss", "bpr_loss", "in_batch_softmax_loss"]
