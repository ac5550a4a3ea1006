"""``item serve``: run the ITEm BentoML service (``serving.service:ItemService``) with ``bentoml serve``.

    item serve [--tag item:VERSION] [--host 127.0.0.1] [--port 3000] [--bentoml-home DIR]
               [--storage-root DIR|gs://bucket/prefix] [--traffic-sample 0.1]

Without ``--tag`` the service serves the model registry's champion (``serving.store.champion_tag``:
the store entry packaged from the version the champion pointer names; registry ``$ITEM_REGISTRY``
or ``<storage root>/registry``), or the newest ``item`` model while the registry has no champion. The command checks that the model is in the store,
then replaces itself with ``python -m bentoml serve`` (signals such as Ctrl+C go straight to
BentoML).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from components.steps.environment import set_offline_defaults

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "serving.service:ItemService"


def model_on_disk(bentoml_home: str, tag: str | None) -> str | None:
    """The ``name:version`` the store at ``bentoml_home`` holds for ``tag`` (default ``item:latest``),
    or None when it has none (:func:`components.storage.layout.find_packaged_model`)."""
    from components.storage.layout import find_packaged_model
    found = find_packaged_model(tag, bentoml_home)
    return found[0] if found else None


def serve_command(host: str, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``bentoml serve`` command line this CLI runs."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port),
            "--working-dir", str(ROOT), *extra]


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.option("--tag", default=None, help="model to serve, e.g. item:VERSION (default: the registry's champion, or the "
              "newest 'item' model in the store while there is none; env ITEM_MODEL_TAG)")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to listen on every interface")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--bentoml-home", default=None, help="BentoML store (default: $BENTOML_HOME or ~/bentoml)")
@click.option("--storage-root", default=None,
              help="storage root for the traffic log (default: $ITEM_STORAGE_ROOT or ./item-storage)")
@click.option("--traffic-sample", default=None, type=click.FloatRange(0.0, 1.0),
              help="share of served embeddings logged (default: $ITEM_TRAFFIC_SAMPLE or 0.1)")
@click.option("--watch-interval", default=None, type=click.FloatRange(0.0),
              help="seconds between reads of the registry's champion pointer; when it moves the server loads "
                   "the new champion and swaps it in without downtime (default: $ITEM_WATCH_INTERVAL_S or 10; "
                   "0 = never; a --tag pins the model and turns watching off)")
@click.option("--shadow", default=None, metavar="VERSION",
              help="a challenger (registry version, or name:version) that also answers a sample of live requests "
                   "off the users' path; the comparison is logged for 'item gate show VERSION' (env ITEM_SHADOW)")
@click.option("--shadow-sample", default=None, type=click.FloatRange(0.0, 1.0),
              help="share of requests the shadow challenger gets (default: $ITEM_SHADOW_SAMPLE or 0.2)")
@click.argument("bentoml_args", nargs=-1, type=click.UNPROCESSED)
def serve(tag: str | None, host: str, port: int, bentoml_home: str | None, storage_root: str | None,
          traffic_sample: float | None, watch_interval: float | None, shadow: str | None,
          shadow_sample: float | None, bentoml_args: tuple[str, ...]) -> None:
    """Serve ITEm: POST /embed, POST /similar, /readyz, /metrics, OpenAPI at /docs.json.

    Without --tag the server serves the registry's champion and follows its pointer (promotions and
    rollbacks reach users without a restart). Further arguments go to ``bentoml serve`` unchanged."""
    env = set_offline_defaults(dict(os.environ))
    if bentoml_home:
        env["BENTOML_HOME"] = str(Path(bentoml_home).expanduser().resolve())
    if tag:
        env["ITEM_MODEL_TAG"] = tag
    # relative to where the command runs (bentoml serve runs in the repository root)
    # (a gs://bucket/prefix storage root is passed on as it is: the traffic log writes to GCS)
    from components import storage
    root = storage_root or env.get("ITEM_STORAGE_ROOT") or "item-storage"
    env["ITEM_STORAGE_ROOT"] = root if storage.is_gcs(root) else str(Path(root).expanduser().resolve())
    if traffic_sample is not None:
        env["ITEM_TRAFFIC_SAMPLE"] = repr(traffic_sample)
    if watch_interval is not None:
        env["ITEM_WATCH_INTERVAL_S"] = repr(watch_interval)
    if shadow:
        env["ITEM_SHADOW"] = shadow
    if shadow_sample is not None:
        env["ITEM_SHADOW_SAMPLE"] = repr(shadow_sample)
    home = env.get("BENTOML_HOME") or "~/bentoml"
    from components.registry import RegistryError
    from serving.store import production_tag
    registry = env.get("ITEM_REGISTRY") or storage.join(env["ITEM_STORAGE_ROOT"], "registry")
    try:                        # the service resolves the same model itself, and keeps following the champion
        wanted, source = production_tag(home, registry, env.get("ITEM_MODEL_TAG") or None)
    except (LookupError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from None
    pinned = source == "pinned"
    found = model_on_disk(home, wanted)
    if found is None:
        raise click.ClickException(f"no model {wanted} in the BentoML store at {home} "
                                   f"(package one with 'item run', or pass --tag / --bentoml-home)")
    cmd = serve_command(host, port, bentoml_args)
    interval = float(env.get("ITEM_WATCH_INTERVAL_S", "10"))
    follow = ("pinned by --tag / ITEM_MODEL_TAG" if pinned else
              f"following the registry's champion every {interval:g} s" if interval > 0 else "not watching the registry")
    click.echo(f"serving {found} from {home} on http://{host}:{port} ({follow}; traffic log sample "
               f"{env.get('ITEM_TRAFFIC_SAMPLE', '0.1')} under {env['ITEM_STORAGE_ROOT']}/traffic)",
               err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    serve()
