"""Loading artifacts into a ServingModel, and swapping the served model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from recxfer.artifacts import MANIFEST, ArtifactError
from recxfer.serve import ModelHolder, ServingModel
from recxfer.v1 import recommender_pb2

TIMEOUT = 5.0


def _request(user_id="alice", domain="books", k=5):
    return recommender_pb2.RecommendRequest(user_id=user_id, domain=domain, k=k)


def test_from_artifact_loads_every_domain(model, domains):
    assert model.version == "v1-faiss"
    assert set(model.domains) == {"video", "books"}
    for name, served in model.domains.items():
        assert served.index.ntotal == len(domains[name].item_ids)
        assert served.index.dim == 4
        assert list(served.emb.user_ids) == list(domains[name].user_ids)
        np.testing.assert_array_equal(served.emb.item_emb, domains[name].item_emb)


@pytest.mark.parametrize(
    "relative",
    ["domains/books/item_emb.npy", "domains/video/user_emb.npy", "domains/books/index.faiss"],
)
def test_corrupt_file_is_refused(tmp_path, domains, make_artifact, relative):
    artifact = make_artifact(tmp_path, domains)
    target = artifact.path / relative
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte: same size, different content
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        ServingModel.from_artifact(artifact.path)


def test_truncated_file_is_refused(tmp_path, domains, make_artifact):
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    target = artifact.path / "domains/books/seen_indices.npy"
    target.write_bytes(target.read_bytes()[:-8])
    with pytest.raises(ArtifactError, match="bytes"):
        ServingModel.from_artifact(artifact.path)


def test_missing_file_and_missing_manifest_are_refused(tmp_path, domains, make_artifact):
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    (artifact.path / "domains/books/item_ids.npy").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        ServingModel.from_artifact(artifact.path)
    (artifact.path / MANIFEST).unlink()
    with pytest.raises(ArtifactError):
        ServingModel.from_artifact(artifact.path)
    with pytest.raises(ArtifactError):
        ServingModel.from_artifact(tmp_path / "does-not-exist")


def test_unlisted_file_is_refused(tmp_path, domains, make_artifact):
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    shutil.copy(
        artifact.path / "domains/books/item_emb.npy", artifact.path / "domains/books/extra.npy"
    )
    with pytest.raises(ArtifactError, match="not in the manifest"):
        ServingModel.from_artifact(artifact.path)


def test_manifest_without_domains_is_refused_with_artifact_error(tmp_path):
    from recxfer.artifacts import write_artifact

    with write_artifact(tmp_path, config={}, data_fingerprint="x") as builder:
        (builder.path / "note.txt").write_text("not a model")
    with pytest.raises(ArtifactError):
        ServingModel.from_artifact(builder.artifact.path)


def test_manifest_domain_without_files_is_refused(tmp_path, domains, make_artifact):
    artifact = make_artifact(tmp_path, domains, use_faiss=False)
    manifest_path = artifact.path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["domains"]["music"] = dict(manifest["domains"]["books"])
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="music"):
        ServingModel.from_artifact(artifact.path)


# --- swapping --------------------------------------------------------------------


def test_swap_changes_model_version_on_next_request(
    start_server, model, artifact_v2, domains, domains_v2, expected
):
    holder = ModelHolder(model)
    running = start_server(holder)
    before = running.stub.Recommend(_request(), timeout=TIMEOUT)
    assert before.model_version == "v1-faiss"
    assert [i.item_id for i in before.items] == expected(domains["books"], "alice", 5)[0]

    new_model = ServingModel.from_artifact(artifact_v2.path)
    assert holder.swap(new_model) is model
    assert holder.get() is new_model

    after = running.stub.Recommend(_request(), timeout=TIMEOUT)
    assert after.model_version == "v2-exact" == artifact_v2.version
    want = expected(domains_v2["books"], "alice", 5)[0]
    assert [i.item_id for i in after.items] == want
    assert want != [i.item_id for i in before.items]

    holder.swap(model)  # and back
    assert running.stub.Recommend(_request(), timeout=TIMEOUT).model_version == "v1-faiss"


def test_swap_during_concurrent_requests_never_mixes_models(start_server, model, artifact_v2):
    """Every answer comes wholly from one model: version and items agree."""
    from concurrent.futures import ThreadPoolExecutor

    new_model = ServingModel.from_artifact(artifact_v2.path)
    answers = {
        m.version: [str(i) for i in m.recommend("bob", "books", 4).item_ids]
        for m in (model, new_model)
    }
    assert answers["v1-faiss"] != answers["v2-exact"]
    holder = ModelHolder(model)
    running = start_server(holder)

    def ask(_):
        response = running.stub.Recommend(_request("bob", "books", 4), timeout=TIMEOUT)
        return response.model_version, [i.item_id for i in response.items]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, n) for n in range(60)]
        for n in range(20):
            holder.swap(new_model if n % 2 == 0 else model)
        results = [f.result() for f in futures]
    for version, items in results:
        assert answers[version] == items
