"""The index pipeline's steps on a ``gs://`` storage root (a real gcp-storage-emulator on loopback):
shard files and the index written as objects, the second run a no-op, and the served-index lookup
downloading the index (not the shard files) for the version a BentoML store entry was packaged from."""

from __future__ import annotations

import os

import numpy as np

from tests.conftest import write_slice
from tests.serving.test_serving_champion import _save


def test_index_on_gcs_is_incremental_and_served_from_a_download(gcs_emulator, packaged_model, tmp_path, monkeypatch):
    from components import storage
    from components.index.build import build_index, embed_shard, index_root_of, shard_file
    from components.index.layout import load_catalog_index
    from serving.store import served_index_folder

    m = packaged_model
    monkeypatch.setenv("ITEM_STORAGE_ROOT", f"gs://{gcs_emulator['bucket']}/storage")
    version = "v-gcs"
    root = index_root_of(version)
    assert root == f"gs://{gcs_emulator['bucket']}/storage/indexes/{version}"
    catalog = write_slice(tmp_path / "catalog", n_plain=20, n_groups=1)
    first = [embed_shard(catalog, s, 2, m["model_dir"], version, root) for s in range(2)]
    assert all(c["written"] for c in first) and sum(c["embedded"] for c in first) > 0
    assert storage.exists(shard_file(root, 1, 2))
    built = build_index(root, version, 2)
    assert built["written"] and storage.exists(storage.join(root, "catalog_index", "index.json"))
    again = [embed_shard(catalog, s, 2, m["model_dir"], version, root) for s in range(2)]
    assert not any(c["written"] for c in again) and not build_index(root, version, 2)["written"]

    home = tmp_path / "bentoml"
    tag = _save(m, home, version)                      # a store entry packaged from registry version v-gcs
    with served_index_folder(tag, m["model_dir"], str(home)) as (folder, source):
        assert source == "catalog"
        assert sorted(p.name for p in folder.iterdir()) == ["catalog_index"]      # no shard files
        listings, emb, meta = load_catalog_index(folder / "catalog_index")
        assert meta["model_version"] == version and len(listings) == built["n"]
        assert np.isfinite(emb["item"]).all()
    # another version has no index under this storage root: the packaged sample is served
    other = _save(m, home, "v-without-index")
    with served_index_folder(other, m["model_dir"], str(home)) as (folder, source):
        assert (str(folder), source) == (m["model_dir"], "package")
    assert os.environ["ITEM_STORAGE_ROOT"].startswith("gs://")
