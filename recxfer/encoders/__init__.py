"""Encoders: ``nn.Module`` towers producing embeddings."""

from recxfer.encoders.id_embedding import IdEmbeddingConfig, IdEmbeddingEncoder
from recxfer.encoders.two_tower import TwoTowerIdModel

__all__ = ["IdEmbeddingConfig", "IdEmbeddingEncoder", "TwoTowerIdModel"]
