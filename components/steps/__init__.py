"""The body of each pipeline step, which the one-file KFP components in ``components/`` call.

- :mod:`components.steps.training`: validate, pretrain, evaluate, gate, register, promote.
- :mod:`components.steps.environment`: the offline / telemetry-off process environment, set first.
- :mod:`components.steps.torchrun_pretrain`, :mod:`components.steps.pytorchjob`: data-parallel
  pre-training (the ``torchrun`` entry point, the Kubeflow PyTorchJob manifest).

The top platform layer: uses promotion, index, registry, catalog and storage; used by serving,
monitoring and the component files (``docs/architecture.md``).
"""
