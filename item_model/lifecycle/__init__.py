"""The platform's model lifecycle: what happens to a trained ITEm between training and serving.

- :mod:`item_model.lifecycle.steps`: the body of each training-pipeline step (validate, pretrain,
  evaluate, gate, register), which the KFP components call.
- :mod:`item_model.lifecycle.gate` / :mod:`~item_model.lifecycle.gate_report` /
  :mod:`~item_model.lifecycle.significance`: the promotion gate, its report and the paired bootstrap.
- :mod:`item_model.lifecycle.registry`: versioned models, the champion pointer and its history.
- :mod:`item_model.lifecycle.index` / :mod:`~item_model.lifecycle.embedding_io`: the catalog index and
  the embedding files the gate, serving and drift monitoring share.
- :mod:`item_model.lifecycle.torchrun_pretrain`: the ``torchrun`` entry point of data-parallel pre-training.

Depends on :mod:`item_model.data` and the ML library; never on serving, monitoring, components or
pipelines (``docs/architecture.md``).
"""
