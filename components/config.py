"""Settings shared by every component: the container image tasks run in on a cluster.

Locally (``kfp.local.SubprocessRunner(use_venv=False)``) the image is ignored and tasks run in the
current virtual environment, so ``packages_to_install`` stays empty and the KFP package is not
re-installed (``install_kfp_package=False``): the image and the venv already hold the pinned set.
"""

import os

BASE_IMAGE = os.environ.get("ITEM_COMPONENT_IMAGE", "item-mlops:0.1.0")
