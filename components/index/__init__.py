"""The catalog index: every listing's embeddings, searchable exactly or approximately (``docs/index.md``).

- :mod:`components.index.build`: embed a catalog shard by shard, build the index, index settings.
- :mod:`components.index.layout`: the index folder (listings + embeddings per kind) on disk / GCS.
- :mod:`components.index.backends`: exact and ANN backends (USearch HNSW, FAISS HNSW / IVF-PQ with
  re-ranking, Milvus) behind one interface, and ANN Recall@k.
"""
