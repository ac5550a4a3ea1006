"""KFP component: the promotion gate. Emits the blessing artifact and a boolean for ``dsl.If``."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate(
    eval_json: Input[Artifact],
    eval_details: Input[Artifact],
    validated_catalog: Input[Dataset],
    gate_config: dict,
    blessing: Output[Artifact],
    report: Output[Markdown],
    report_html: Output[HTML],
) -> bool:
    """blessing.json (``blessed`` + one row per criterion), the same as Markdown, a self-contained
    HTML report (metric bars with confidence intervals, retrieval examples, worst categories);
    returns ``blessed``.

    The verdict is the single return value (KFP output ``Output``) rather than a named output:
    kfp 2.17's local orchestrator resolves ``dsl.If`` conditions only on outputs named ``Output``.
    """
    import logging

    from components.steps.training import gate_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = gate_step(eval_json.path, gate_config, blessing.path, report.path, eval_details.path,
                       validated_catalog.path, report_html.path)
    blessing.metadata["blessed"] = result["blessed"]
    return bool(result["blessed"])
