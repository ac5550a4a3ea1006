"""KFP component, run only when blessed and served: move the champion pointer to the challenger
(atomic, recorded in the promotion history, refused if another run promoted meanwhile)."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def promote(eval_json: Input[Artifact], registry_root: str, registry_version: str) -> str:
    """Returns the champion's version (the challenger's)."""
    import logging

    from components.steps.training import promote_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return promote_step(registry_root, registry_version, eval_json.path)["version"]
