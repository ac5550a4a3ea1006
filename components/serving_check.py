"""KFP component, run only when blessed: serve the packaged challenger on loopback and check it
against the in-process model before it may be promoted (TFX's InfraValidator, for BentoML)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def serving_check(
    bento_model: Input[Artifact],
    gate_config: dict,
    registry_root: str,
    registry_version: str,
    bentoml_home: str,
    result: Output[Artifact],
) -> bool:
    """result.json (``passed``, ``reason``, latencies, largest vector difference); returns ``passed``
    (the KFP output ``Output``, which kfp.local's ``dsl.If`` can read). A failure is recorded in the
    registry's history as ``blocked`` with the reason; the champion stays."""
    import json
    import logging

    from serving.serving_check import serving_check_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with open(bento_model.path, encoding="utf-8") as fh:
        tag = json.load(fh)["tag"]
    out = serving_check_step(tag, bentoml_home, gate_config, registry_root,
                             registry_version, result.path)
    result.metadata["passed"] = bool(out["passed"])
    return bool(out["passed"])
