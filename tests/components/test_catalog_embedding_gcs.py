"""The index pipeline's steps on a ``gs://`` storage root (a real gcp-storage-emulator on loopback):
shard files and the index written as objects, the second run a no-op, and the served-index lookup
downloading the index (not the shard files) for the version a BentoML store entry was packaged from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_slice
from tests.serving.test_serving_champion import _save


def _objects(emulator: dict, prefix: str) -> dict[str, int]:
    """``{object name under prefix: generation}`` as the emulator holds them, read with a client of
    this test's own (not the code under test's)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator["host"]})
    return {b.name[len(prefix):]: b.generation for b in client.list_blobs(emulator["bucket"], prefix=prefix)}


def _object_bytes(emulator: dict, name: str) -> bytes:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator["host"]})
    return client.bucket(emulator["bucket"]).blob(name).download_as_bytes()


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
    # what the emulator holds, read back independently: both shard files and the index, as objects
    prefix = f"storage/indexes/{version}/"
    written = _objects(gcs_emulator, prefix)
    assert {"shards/shard-00000-of-00002.parquet", "shards/shard-00001-of-00002.parquet",
            "catalog_index/index.json"} <= set(written), sorted(written)
    assert set(_objects(gcs_emulator, "storage/")) == {f"indexes/{version}/" + n for n in written}, "objects outside the index root"
    again = [embed_shard(catalog, s, 2, m["model_dir"], version, root) for s in range(2)]
    assert not any(c["written"] for c in again) and not build_index(root, version, 2)["written"]
    assert _objects(gcs_emulator, prefix) == written          # the second run rewrote no object (same generations)

    home = tmp_path / "bentoml"
    tag = _save(m, home, version)                      # a store entry packaged from registry version v-gcs
    with served_index_folder(tag, m["model_dir"], str(home)) as (folder, source):
        assert source == "catalog"
        assert sorted(p.name for p in folder.iterdir()) == ["catalog_index"]      # no shard files
        downloaded = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert downloaded == sorted(n for n in written if n.startswith("catalog_index/"))
        for name in downloaded:                                   # byte for byte what the emulator holds
            assert (folder / name).read_bytes() == _object_bytes(gcs_emulator, prefix + name), name
        listings, emb, meta = load_catalog_index(folder / "catalog_index")
        assert meta["model_version"] == version and len(listings) == built["n"]
        assert np.isfinite(emb["joint"]).all()
    # another version has no index under this storage root: the packaged sample is served
    other = _save(m, home, "v-without-index")
    with served_index_folder(other, m["model_dir"], str(home)) as (folder, source):
        assert (str(folder), source) == (m["model_dir"], "package")
    # nothing was looked up, read or written on a local path named like the URI
    assert not Path("gs:").exists() and not (tmp_path / "gs:").exists()
    assert not list(tmp_path.rglob("indexes"))
    assert set(_objects(gcs_emulator, "storage/")) == {f"indexes/{version}/" + n for n in written}     # v-without-index wrote nothing
