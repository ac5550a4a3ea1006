"""An index refresh when only a listing's photo changed (components/index/build.py): the listing's
content hash changes, its shard re-embeds that one listing and reuses every other vector, and the
built index's fingerprint moves. Real catalog rows (a slice, the photo replaced by another real
listing's photo), the tiny real model of ``packaged_model``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tests.conftest import CATALOG, write_slice


def test_changed_photo_re_embeds_only_that_listing(packaged_model, tmp_path):
    import pyarrow.parquet as pq

    from components.index.build import build_index, embed_shard, read_shard, shard_file
    from components.index.layout import load_catalog_index

    other_photo = pq.read_table(sorted((CATALOG / "data").glob("*.parquet"))[0]).slice(200, 1).column("image")[0].as_py()

    def new_photo(table: pa.Table) -> pa.Table:       # listing 3 gets another real listing's photo; title unchanged
        images = table.column("image").to_pylist()
        assert images[3]["bytes"] != other_photo["bytes"]
        images[3] = other_photo
        return table.set_column(table.schema.get_field_index("image"), "image",
                                pa.array(images, type=table.schema.field("image").type))

    before = write_slice(tmp_path / "before", n_plain=24, n_groups=0)
    after = write_slice(tmp_path / "after", n_plain=24, n_groups=0, mutate=new_photo)
    changed = str(pq.read_table(before / "data").column("id")[3].as_py())
    root, model = tmp_path / "index", packaged_model["model_dir"]

    first = embed_shard(before, 0, 1, model, "v1", root)
    assert (first["embedded"], first["reused"], first["written"]) == (24, 0, True)
    built_before = build_index(root, "v1", 1)
    rows0, vec0 = read_shard(shard_file(root, 0, 1))

    second = embed_shard(after, 0, 1, model, "v1", root)
    assert (second["listings"], second["embedded"], second["reused"], second["removed"], second["written"]) \
        == (24, 1, 23, 0, True)
    rows1, vec1 = read_shard(shard_file(root, 0, 1))
    assert rows1["product_id"].tolist() == rows0["product_id"].tolist()
    i = rows1["product_id"].tolist().index(changed)
    differs = rows0["content_hash"].to_numpy() != rows1["content_hash"].to_numpy()
    assert np.flatnonzero(differs).tolist() == [i]                 # only the changed listing's hash moved
    others = np.arange(len(rows1)) != i
    for kind in ("joint", "text", "image"):
        np.testing.assert_array_equal(vec1[kind][others], vec0[kind][others])   # reused, bit for bit
    # the joint and photo-only vectors follow the new photo; the title-only one is the same title's
    assert np.abs(vec1["image"][i] - vec0["image"][i]).max() > 1e-3
    assert np.abs(vec1["joint"][i] - vec0["joint"][i]).max() > 1e-4
    np.testing.assert_allclose(vec1["text"][i], vec0["text"][i], atol=1e-5)

    built_after = build_index(root, "v1", 1)
    assert built_after["catalog_fingerprint"] != built_before["catalog_fingerprint"]
    listings, emb, _ = load_catalog_index(root / "catalog_index")
    j = listings["product_id"].astype(str).tolist().index(changed)
    np.testing.assert_array_equal(emb["image"][j], vec1["image"][i])

    third = embed_shard(after, 0, 1, model, "v1", root)              # nothing changed since: left as it was
    assert (third["embedded"], third["reused"], third["written"]) == (0, 24, False)


def test_index_takes_the_evaluations_vectors_of_the_same_model_only(packaged_model, tmp_path):
    """No listing embedded twice in a run (issue 32): vectors the evaluation saved with the model's digest
    and each row's content hash are taken as they are; a listing whose photo changed since, and every
    listing when the digest names another model, are embedded."""
    import pyarrow.parquet as pq

    from components import catalog as cat
    from components.index.build import content_hashes, embed_shard, model_digest, read_shard, shard_file
    from components.steps.training import save_eval_embeddings
    from item_model.inference import embed_catalog_modes
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    folder = write_slice(tmp_path / "catalog", n_plain=20, n_groups=0)
    df = cat.read_catalog(folder)
    model_dir = packaged_model["model_dir"]
    model = ItemModel.from_pretrained(model_dir).eval()
    vectors = embed_catalog_modes(model, ItemProcessor.from_pretrained(model_dir, model.config), df.head(12),
                                  progress=False)
    hashes = content_hashes(df.head(12))
    hashes[0] = "0" * 64                                           # listing 0 changed since the evaluation
    names = {"joint": "item", "text": "item_text_only", "image": "item_image_only"}
    ids = df["product_id"].astype(str).head(12).to_numpy()
    good, other = tmp_path / "eval_vectors.npz", tmp_path / "other_model.npz"
    save_eval_embeddings(str(good), ids, {names[k]: v for k, v in vectors.items()}, hashes, model_digest(model_dir))
    save_eval_embeddings(str(other), ids, {names[k]: v for k, v in vectors.items()}, hashes, "f" * 64)

    taken = embed_shard(folder, 0, 1, model_dir, "v1", tmp_path / "a", reuse_vectors=good)
    assert (taken["listings"], taken["embedded"], taken["reused_from_evaluation"]) == (20, 20, 11)
    rows, stored = read_shard(shard_file(tmp_path / "a", 0, 1))
    at = {p: i for i, p in enumerate(rows["product_id"].astype(str))}
    for kind in ("joint", "text", "image"):                        # bit for bit the evaluation's
        np.testing.assert_array_equal(stored[kind][[at[p] for p in ids[1:]]], vectors[kind][1:])
    embed_shard(folder, 0, 1, model_dir, "v1", tmp_path / "b")
    _, computed = read_shard(shard_file(tmp_path / "b", 0, 1))
    np.testing.assert_allclose(stored["joint"], computed["joint"], atol=1e-5)   # the same vectors either way
    refused = embed_shard(folder, 0, 1, model_dir, "v1", tmp_path / "c", reuse_vectors=other)
    assert refused["reused_from_evaluation"] == 0 and refused["embedded"] == 20
    assert pq.read_metadata(shard_file(tmp_path / "c", 0, 1)).num_rows == 20
