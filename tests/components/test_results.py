"""Result files as types (components/storage/results.py): round trip, schema version, clear errors."""

from __future__ import annotations

import json

import pytest

from components.storage.results import Blessing, DriftSummary, EvalResult, ResultFileError


def test_eval_result_round_trip_keeps_extra_keys(tmp_path):
    r = EvalResult(models={"item": {"recall@1": 0.9, "mAP": 0.8}}, n_listings=10, catalog_fingerprint="f" * 64,
                   extra={"future_key": [1, 2]})
    r.to_json(tmp_path / "eval.json")
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["schema_version"] == EvalResult.SCHEMA_VERSION and data["future_key"] == [1, 2]
    back = EvalResult.from_json(tmp_path / "eval.json")
    assert back.metric("item", "recall@1") == 0.9 and back.metric("item", "nope") is None
    assert back.to_dict() == data


def test_file_without_schema_version_reads_as_version_1(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"blessed": False, "criteria": [{"metric": "m", "passed": False}]}))
    b = Blessing.from_json(tmp_path / "b.json")
    assert b.blessed is False and b.failed() == ["m"]


@pytest.mark.parametrize("content, match", [
    ("{not json", "unreadable"),
    (json.dumps({"blessed": True}), r"missing field\(s\) \['criteria'\]"),
    (json.dumps({"blessed": True, "criteria": [], "schema_version": 99}), "schema_version 99 is newer"),
    (json.dumps([1, 2]), "not a JSON object"),
])
def test_bad_result_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "blessing.json"
    path.write_text(content)
    with pytest.raises(ResultFileError, match=match) as info:
        Blessing.from_json(path)
    assert str(path) in str(info.value)


def test_drift_summary_requires_its_verdict_fields():
    with pytest.raises(ResultFileError, match="drifted_modalities"):
        DriftSummary.from_dict({"drift": True, "tested_modalities": [], "modalities": {}}, "summary")
