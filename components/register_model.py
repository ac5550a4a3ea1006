"""KFP component: store the challenger as an immutable registry version; promote it to champion when
blessed (atomic pointer move, recorded in the promotion history), else record the gate's block."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    eval_json: Input[Artifact],
    eval_details: Input[Artifact],
    blessing: Input[Artifact],
    report: Input[Markdown],
    report_html: Input[HTML],
    validated_catalog: Input[Dataset],
    registry_root: str,
    run_name: str,
) -> str:
    """Returns the new registry version id."""
    import logging

    from components.steps.training import register_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = register_step(registry_root, model.path, eval_json.path, blessing.path, validated_catalog.path,
                        files={"eval_details.npz": eval_details.path, "gate_report.md": report.path,
                               "gate_report.html": report_html.path},
                        run=run_name)
    return out["version"]
