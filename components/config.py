"""Settings shared by every component: the container image tasks run in on a cluster.

The image is configuration: ``$ITEM_COMPONENT_IMAGE``, else ``item-mlops:0.1.0`` (the tag ``docker build``
of the repo's ``Dockerfile`` is documented with: the pinned ``requirements.lock`` and the project, so
tasks never ``pip install``). ``item compile --cluster FILE`` / ``item submit`` set every task's image
from the cluster file's ``image`` (``pipelines/configs/cluster.yaml``); components never read that file
themselves (imports and file reads run one way, ``docs/architecture.md``).

Locally (``kfp.local.SubprocessRunner(use_venv=False)``) the image is ignored and tasks run in the
current virtual environment, so ``packages_to_install`` stays empty and the KFP package is not
re-installed (``install_kfp_package=False``): the image and the venv already hold the pinned set.
"""

import os

DEFAULT_IMAGE = "item-mlops:0.1.0"

#: the image every component is declared with (the cluster config overrides it at compile time)
BASE_IMAGE = os.environ.get("ITEM_COMPONENT_IMAGE") or DEFAULT_IMAGE
