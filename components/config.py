"""Settings shared by every component: the container image tasks run in on a cluster.

The image is configuration: ``$ITEM_COMPONENT_IMAGE``, else ``image`` in
``pipelines/configs/cluster.yaml``, else ``item-mlops:0.1.0``. It is built from the repo's
``Dockerfile`` (the pinned ``requirements.lock`` and the project, so tasks never ``pip install``);
``item compile --cluster FILE`` / ``item submit`` also set every task's image from FILE.

Locally (``kfp.local.SubprocessRunner(use_venv=False)``) the image is ignored and tasks run in the
current virtual environment, so ``packages_to_install`` stays empty and the KFP package is not
re-installed (``install_kfp_package=False``): the image and the venv already hold the pinned set.
"""

import os
from pathlib import Path

CLUSTER_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "cluster.yaml"
DEFAULT_IMAGE = "item-mlops:0.1.0"


def configured_image() -> str:
    """``$ITEM_COMPONENT_IMAGE``, else the cluster config's ``image``, else :data:`DEFAULT_IMAGE`."""
    if os.environ.get("ITEM_COMPONENT_IMAGE"):
        return os.environ["ITEM_COMPONENT_IMAGE"]
    try:
        import yaml
        image = (yaml.safe_load(CLUSTER_FILE.read_text(encoding="utf-8")) or {}).get("image")
    except (OSError, ValueError):
        image = None
    return image or DEFAULT_IMAGE


BASE_IMAGE = configured_image()
