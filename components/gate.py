"""KFP component: the promotion gate. Emits the blessing artifact and a boolean for ``dsl.If``."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate(
    eval_json: Input[Artifact],
    gate_config: dict,
    blessing: Output[Artifact],
    report: Output[Markdown],
) -> NamedTuple("GateOutputs", [("blessed", bool)]):
    """blessing.json (``blessed`` + one row per criterion), the same as Markdown, and ``blessed``."""
    import logging
    from collections import namedtuple

    from item_model.steps import gate_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = gate_step(eval_json.path, gate_config, blessing.path, report.path)
    blessing.metadata["blessed"] = result["blessed"]
    return namedtuple("GateOutputs", ["blessed"])(bool(result["blessed"]))
