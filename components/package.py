"""KFP component, run only when blessed: save the model into the BentoML model store."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def package(
    model: Input[Model],
    eval_json: Input[Artifact],
    blessing: Input[Artifact],
    validated_catalog: Input[Dataset],
    registry_version: str,
    storage_root: str,
    model_name: str,
    bentoml_home: str,
    bento_model: Output[Artifact],
):
    """A BentoML model ``<model_name>:<version>`` (model folder, eval.json, blessing.json and a copy of the
    catalog index the index steps built under ``<storage_root>/indexes/<registry_version>``) with labels
    and metadata; its tag in bento_model."""
    import logging

    from components.index.build import index_root_of, local_index
    from serving.store import save_to_bentoml

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with local_index(index_root_of(registry_version, storage_root or None)) as index_dir:
        if index_dir is None:
            raise FileNotFoundError(f"no catalog index of {registry_version} under {storage_root}/indexes: "
                                    "the build-index step did not run")
        tag = save_to_bentoml(model.path, eval_json.path, blessing.path, validated_catalog.path,
                              model_name, bentoml_home or None, bento_model.path, index_dir,
                              registry_version=registry_version)
    bento_model.metadata["tag"] = tag
