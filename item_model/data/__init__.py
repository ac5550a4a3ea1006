"""The platform's data layer: where catalogs and artifacts live and what a catalog is.

- :mod:`item_model.data.storage`: one API over local folders and ``gs://`` (Google Cloud Storage),
  atomic writes, and the ``gs://`` image reader of :mod:`item_model.image_utils`.
- :mod:`item_model.data.catalog`: the canonical listing schema, the shard reader, the hash split.
- :mod:`item_model.data.validation`: the Great Expectations suites a catalog must pass before training.

Depends on the ML library (:mod:`item_model`) and nothing above it (``docs/architecture.md``).
"""
