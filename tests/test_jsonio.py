"""Strict JSON: NaN as null, numpy and paths converted, files written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import dumps, to_jsonable, write_json, write_jsonl


def _strict(text: str):
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_to_jsonable_converts_numpy_paths_tuples_and_non_finite_floats() -> None:
    data = {
        "f32": np.float32(0.5),
        "i64": np.int64(3),
        "flag": np.bool_(True),
        "arr": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "nan": float("nan"),
        "neg_inf": -math.inf,
        "path": Path("a") / "b.json",
        "pair": (1, (2, 3)),
        7: "int key",
    }
    assert to_jsonable(data) == {
        "f32": 0.5,
        "i64": 3,
        "flag": True,
        "arr": [[1.0, None], [None, 2.0]],
        "nan": None,
        "neg_inf": None,
        "path": "a/b.json",
        "pair": [1, [2, 3]],
        "7": "int key",
    }
    assert type(to_jsonable(np.int64(3))) is int and type(to_jsonable(np.float64(0.25))) is float


def test_dumps_is_plain_json_with_nan_as_null() -> None:
    assert dumps({"a": [1, float("nan")]}, indent=None) == '{"a": [1, null]}'
    assert dumps({"b": 1, "a": 2}, indent=None, sort_keys=True) == '{"a": 2, "b": 1}'
    assert dumps({"a": 1}) == '{\n  "a": 1\n}'
    assert dumps({"a": 1}, indent=1) == '{\n "a": 1\n}'


def test_write_json_is_strict_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.json"
    assert write_json(path, {"ss": float("nan"), "icat": np.float64(61.25)}) == path
    text = path.read_text(encoding="utf-8")
    assert text == '{\n  "ss": null,\n  "icat": 61.25\n}\n'
    assert _strict(text) == {"ss": None, "icat": 61.25}
    write_json(path, {"ss": 50.0})  # replaces by default
    assert _strict(path.read_text()) == {"ss": 50.0}
    with pytest.raises(DebiasError, match="already exists"):
        write_json(path, {}, overwrite=False)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left behind
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert _strict(path.read_text()) == {"ss": 50.0}  # a failed write keeps the old file


def test_write_jsonl_writes_one_strict_value_per_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "log.jsonl", ({"step": i, "loss": v} for i, v in enumerate([0.5, float("inf")])))
    assert path.read_text() == '{"step": 0, "loss": 0.5}\n{"step": 1, "loss": null}\n'


def test_demo_results_with_a_nan_metric_are_strict_json(tmp_path: Path) -> None:
    # The demo wrote its results files with json.dumps' defaults: a NaN metric came out as the token NaN.
    from peft_debias.demo.run import _save

    relative = _save({"stereoset": {"axes": {"gender": {"icat": float("nan"), "ss": 55.0}}}}, tmp_path, "base")
    text = (tmp_path / relative).read_text(encoding="utf-8")
    assert "NaN" not in text
    assert _strict(text)["stereoset"]["axes"]["gender"] == {"icat": None, "ss": 55.0}
