"""Encoders: ``nn.Module`` towers producing embeddings."""

from recxfer.encoders.id_embedding import IdEmbeddingConfig, IdEmbeddingEncoder
from recxfer.encoders.text import (
    TEXT_DIM,
    ItemTower,
    ItemTowerConfig,
    TextEmbeddingCache,
    TextEncoderConfig,
    TextTower,
    TextTowerConfig,
    encode_texts,
)
from recxfer.encoders.two_tower import TwoTowerIdModel
from recxfer.encoders.user_encoder import HistoryUserEncoder, UserEncoderConfig

__all__ = [
    "IdEmbeddingConfig",
    "IdEmbeddingEncoder",
    "TwoTowerIdModel",
    # text tower
    "TEXT_DIM",
    "ItemTower",
    "ItemTowerConfig",
    "TextEmbeddingCache",
    "TextEncoderConfig",
    "TextTower",
    "TextTowerConfig",
    "encode_texts",
    # shared user encoder
    "HistoryUserEncoder",
    "UserEncoderConfig",
]
