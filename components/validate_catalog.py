"""KFP component: read and validate the catalog (Great Expectations), quarantine bad rows, split."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_catalog(
    catalog: str,
    max_listings: int,
    max_quarantine_fraction: float,
    validated_catalog: Output[Dataset],
    quarantine: Output[Dataset],
    validation_result: Output[Artifact],
    data_docs: Output[Artifact],
):
    """Validated catalog (folder), quarantined rows (parquet), GX result (JSON), GX Data Docs (folder)."""
    import logging

    from components.steps.training import validate_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = validate_step(catalog, validated_catalog.path, quarantine.path, validation_result.path,
                            data_docs.path, max_listings=max_listings,
                            max_quarantine_fraction=max_quarantine_fraction)
    validated_catalog.metadata.update({k: summary[k] for k in ("fingerprint", "n_valid", "n_quarantined")})
    quarantine.metadata["n_rows"] = summary["n_quarantined"]
    data_docs.metadata["index"] = summary["data_docs_index"]
