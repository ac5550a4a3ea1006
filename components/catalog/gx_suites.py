"""Running catalog validation's suites on Great Expectations (one ephemeral context, Data Docs built
into a temporary folder and swapped in) and turning GX results into the entries of the result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.catalog.checks import _CHECK, DATA_DOCS_DIR, DATA_DOCS_SITE, MAX_EXAMPLES, MAX_LISTED, _Check


class _GX:
    """One ephemeral GX context with a pandas dataframe asset; runs one suite per call."""

    def __init__(self, out_dir: Path | None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        for site in list(self.context.list_data_docs_sites()):  # the default temp-dir site
            self.context.delete_data_docs_site(site)
        datasource = self.context.data_sources.add_pandas("catalog")
        asset = datasource.add_dataframe_asset("listings")
        self.batch = asset.add_batch_definition_whole_dataframe("whole_catalog")
        self.docs_dir: Path | None = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.docs_dir = Path(tempfile.mkdtemp(prefix=f".{DATA_DOCS_DIR}.", dir=out_dir))
            self.docs_dir.chmod(0o755)  # mkdtemp makes it private; the docs are meant to be read
            self.context.add_data_docs_site(DATA_DOCS_SITE, {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(self.docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })

    def run(self, suite_name: str, checks: list[_Check], frame: pd.DataFrame,
            result_format: dict) -> tuple[dict, dict[str, dict]]:
        """Run ``checks`` as suite ``suite_name`` on ``frame``: (result.to_json_dict(), check name -> its result)."""
        suite = self.context.suites.add(self.gx.ExpectationSuite(name=suite_name))
        for check in checks:
            check.expectation.meta = {**(check.expectation.meta or {}), _CHECK: check.name}
            suite.add_expectation(check.expectation)
        definition = self.context.validation_definitions.add(
            self.gx.ValidationDefinition(name=f"{suite_name}_validation", data=self.batch, suite=suite))
        res = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        as_dict = _plain_json(res.to_json_dict())
        by_check = {}
        for r in as_dict.get("results", []):
            name = ((r.get("expectation_config") or {}).get("meta") or {}).get(_CHECK)
            if name:
                by_check[name] = r
        return as_dict, by_check

    def build_docs(self, out_dir: Path) -> Path | None:
        """Build Data Docs into a temporary folder and swap it in as ``out_dir/data_docs``."""
        if self.docs_dir is None:
            return None
        self.context.build_data_docs(site_names=[DATA_DOCS_SITE])
        final = out_dir / DATA_DOCS_DIR
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{DATA_DOCS_DIR}.old.", dir=out_dir))
            os.replace(final, old / DATA_DOCS_DIR)
        os.replace(self.docs_dir, final)
        self.docs_dir = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        index = final / "index.html"
        return index if index.exists() else None

    def discard(self) -> None:
        if self.docs_dir is not None:
            shutil.rmtree(self.docs_dir, ignore_errors=True)
            self.docs_dir = None


# --------------------------------------------------------------------------------------------------
# result helpers


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _plain_json(obj: Any) -> Any:
    """Round-trip through JSON so the result holds only plain JSON types (NaN becomes null)."""
    text = json.dumps(obj, default=_json_default)
    return json.loads(text, parse_constant=lambda _: None)


def _truncate_lists(suite_result: dict) -> None:
    for r in suite_result.get("results", []):
        res = r.get("result") or {}
        for key in ("unexpected_list", "unexpected_index_list"):
            values = res.get(key)
            if isinstance(values, list) and len(values) > MAX_LISTED:
                res[key] = values[:MAX_LISTED]
                res[f"{key}_truncated_from"] = len(values)


def _exception_message(r: dict) -> str | None:
    info = r.get("exception_info") or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _failed_rows(r: dict) -> list[int]:
    return [int(i) for i in (r.get("result") or {}).get("unexpected_index_list") or []]


def _id_examples(product_ids: np.ndarray, rows: list[int]) -> list[str]:
    out: list[str] = []
    for i in rows:
        pid = product_ids[i] if product_ids is not None else None
        label = f"row {i}" if pid is None or (np.ndim(pid) == 0 and pd.isna(pid)) else str(pid)
        if label not in out:
            out.append(label)
        if len(out) == MAX_EXAMPLES:
            break
    return out


def _entry(check: _Check, severity: str, count: int | None, examples: list[str],
           message: str) -> dict:
    return {"suite": check.suite, "check": check.name,
            "expectation": check.expectation.expectation_type, "column": check.column,
            "severity": severity, "unexpected_count": count, "examples": examples, "message": message}


def _quarantine_frame(df: pd.DataFrame, reasons: dict[int, list[str]]) -> pd.DataFrame:
    rows = sorted(reasons)
    return pd.DataFrame({
        "product_id": (df["product_id"].iloc[rows].to_numpy() if "product_id" in df.columns
                       else np.full(len(rows), None, dtype=object)),
        "title": (df["title"].iloc[rows].to_numpy() if "title" in df.columns
                  else np.full(len(rows), None, dtype=object)),
        "reason": pd.Series(["; ".join(dict.fromkeys(reasons[r])) for r in rows], dtype=object).to_numpy(),
        "row": np.asarray(rows, dtype=np.int64),
    })
