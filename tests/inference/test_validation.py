"""Requests checked against real MLflow signatures, as the registry stores them (parts parsed from JSON)."""

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from apps.inference.payloads import PayloadError, payload_parse
from apps.inference.validation import SignatureMismatch, signature_validate

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 5.1, 1.8], [4.9, 3.1, 1.5, 0.1]]
EXAMPLE = Path(__file__).resolve().parents[2] / "example.json"


def stored(signature) -> dict:
    """The registry's copy: each part of `to_dict()` is a JSON string, parsed; absent parts left out."""
    return {part: json.loads(text) for part, text in signature.to_dict().items() if text is not None}


@pytest.fixture(scope="module")
def iris_signature() -> dict:
    features = pd.DataFrame(ROWS, columns=COLUMNS)
    return stored(infer_signature(features, np.array([0, 2, 2, 0])))


@pytest.fixture(scope="module")
def params_signature() -> dict:
    features = pd.DataFrame(ROWS, columns=COLUMNS)
    return stored(infer_signature(features, np.array([0, 2, 2, 0]), params={"threshold": 0.5, "labels": ["a"]}))


@pytest.fixture(scope="module")
def tensor_signature() -> dict:
    return stored(infer_signature(np.array(ROWS, dtype=np.float64), np.array([0, 2, 2, 0])))


@pytest.fixture(scope="module")
def mixed_signature() -> dict:
    frame = pd.DataFrame(
        {
            "count": [1, 2],
            "flag": [True, False],
            "label": ["x", None],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02"]),
            "blob": [b"ab", b"cd"],
            "small": np.array([1, 2], dtype=np.int32),
        }
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        return stored(infer_signature(frame))


def split(columns, rows, **extra) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}, **extra}


def mismatch(body: dict, signature: dict | None) -> SignatureMismatch:
    with pytest.raises(SignatureMismatch) as caught:
        signature_validate(payload_parse(body), signature)
    return caught.value


def test_the_stored_signatures_have_mlflows_shape(iris_signature, tensor_signature, params_signature):
    assert iris_signature["inputs"][0] == {"type": "double", "name": "sepal_length", "required": True}
    assert "params" not in iris_signature
    assert tensor_signature["inputs"] == [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]
    assert {"name": "threshold", "type": "double", "default": 0.5, "shape": None} in params_signature["params"]


def test_no_signature_means_nothing_to_check():
    signature_validate(payload_parse({"inputs": {"anything": ["goes"]}}), None)
    signature_validate(payload_parse({"inputs": {"anything": ["goes"]}}), {})


def test_mismatch_is_a_payload_error_with_its_own_code(iris_signature):
    error = mismatch(split(["foo"], [[1]]), iris_signature)
    assert isinstance(error, PayloadError)
    assert error.code == "signature_mismatch"


def test_every_tabular_form_validates_against_the_iris_signature(iris_signature):
    records = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]
    columns = {name: [row[i] for row in ROWS] for i, name in enumerate(COLUMNS)}
    for body in (split(COLUMNS, ROWS), {"dataframe_records": records}, {"instances": records}, {"inputs": columns}):
        signature_validate(payload_parse(body), iris_signature)


def test_the_normalised_example_validates_against_the_iris_signature(iris_signature):
    body = payload_parse(json.loads(EXAMPLE.read_text())).to_mlflow_body()
    signature_validate(payload_parse(body), iris_signature)


def test_column_order_does_not_matter(iris_signature):
    reordered = list(reversed(COLUMNS))
    signature_validate(payload_parse(split(reordered, [list(reversed(row)) for row in ROWS])), iris_signature)


def test_ints_are_accepted_for_doubles(iris_signature):
    signature_validate(payload_parse(split(COLUMNS, [[5, 3, 1, 0]])), iris_signature)


def test_missing_required_column_is_named(iris_signature):
    error = mismatch(split(COLUMNS[:3], [row[:3] for row in ROWS]), iris_signature)
    assert error.message == "missing required column 'petal_width'"
    assert error.field == "petal_width"


def test_unknown_column_is_named(iris_signature):
    error = mismatch(split([*COLUMNS, "foo"], [[*row, 1] for row in ROWS]), iris_signature)
    assert error.message == "unknown column 'foo'"
    assert error.field == "foo"


@pytest.mark.parametrize(
    ("value", "got"), [("5.1", "string"), (True, "boolean"), (None, "null"), ([1.0], "array"), ({"v": 1}, "object")]
)
def test_wrong_type_names_the_column_and_the_row(iris_signature, value, got):
    rows = [list(row) for row in ROWS]
    rows[3][0] = value
    error = mismatch(split(COLUMNS, rows), iris_signature)
    assert error.message == f"column 'sepal_length' row 3: expected double, got {got}"
    assert error.field == "sepal_length"


def test_a_missing_key_in_a_record_is_a_null_in_a_required_column(iris_signature):
    records = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]
    del records[1]["sepal_width"]
    error = mismatch({"dataframe_records": records}, iris_signature)
    assert error.message == "column 'sepal_width' row 1: expected double, got null"


def test_mixed_signature_types(mixed_signature):
    by_name = {spec["name"]: spec for spec in mixed_signature["inputs"]}
    assert by_name["count"]["type"] == "long"
    assert by_name["small"]["type"] == "integer"
    assert by_name["label"]["required"] is False
    body = {
        "dataframe_records": [
            {"count": 1, "flag": True, "label": "x", "when": "2024-01-01T10:00:00", "blob": "YWI=", "small": 5},
            {"count": 2.0, "flag": False, "when": "2024-01-02", "blob": "Y2Q=", "small": -7},
        ]
    }
    signature_validate(payload_parse(body), mixed_signature)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("count", 1.5, "column 'count' row 0: expected long, got number"),
        ("count", True, "column 'count' row 0: expected long, got boolean"),
        ("count", "1", "column 'count' row 0: expected long, got string"),
        ("count", 2**63, "column 'count' row 0: expected long, got integer"),
        ("small", 2**31, "column 'small' row 0: expected integer, got integer"),
        ("small", 2.5, "column 'small' row 0: expected integer, got number"),
        ("flag", 1, "column 'flag' row 0: expected boolean, got integer"),
        ("label", 3, "column 'label' row 0: expected string, got integer"),
        ("when", "yesterday", "column 'when' row 0: expected datetime, got string"),
        ("when", 1704067200, "column 'when' row 0: expected datetime, got integer"),
        ("blob", "not base64!", "column 'blob' row 0: expected binary, got string"),
        ("blob", None, "column 'blob' row 0: expected binary, got null"),
    ],
)
def test_mixed_signature_refusals(mixed_signature, column, value, message):
    record = {"count": 1, "flag": True, "label": "x", "when": "2024-01-01", "blob": "YWI=", "small": 1}
    record[column] = value
    error = mismatch({"dataframe_records": [record]}, mixed_signature)
    assert error.message == message
    assert error.field == column


def test_optional_column_may_be_absent_or_null(mixed_signature):
    record = {"count": 1, "flag": True, "when": "2024-01-01", "blob": "YWI=", "small": 1}
    signature_validate(payload_parse({"dataframe_records": [record]}), mixed_signature)
    signature_validate(payload_parse({"dataframe_records": [{**record, "label": None}]}), mixed_signature)


def test_a_tensor_sent_to_a_column_model_is_refused(iris_signature):
    error = mismatch({"inputs": ROWS}, iris_signature)
    assert "named columns" in error.message
    assert error.field == "inputs"


def test_tensor_input_validates_against_a_tensor_signature(tensor_signature):
    signature_validate(payload_parse({"inputs": ROWS}), tensor_signature)
    signature_validate(payload_parse({"instances": [[1, 2, 3, 4]]}), tensor_signature)


def test_a_table_validates_against_a_single_unnamed_tensor(tensor_signature):
    signature_validate(payload_parse(split(COLUMNS, ROWS)), tensor_signature)
    error = mismatch(split(COLUMNS[:3], [row[:3] for row in ROWS]), tensor_signature)
    assert error.message == "input: expected shape (-1, 4), got (4, 3)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[1.0, 2.0, 3.0]], "input: expected shape (-1, 4), got (1, 3)"),
        ([1.0, 2.0, 3.0, 4.0], "input: expected shape (-1, 4), got (4)"),
        ([[[1.0, 2.0, 3.0, 4.0]]], "input: expected shape (-1, 4), got (1, 1, 4)"),
        ([[1.0, 2.0, "x", 4.0]], "input: expected float64 elements, got string"),
        ([[1.0, 2.0, True, 4.0]], "input: expected float64 elements, got boolean"),
    ],
)
def test_tensor_shape_and_dtype_mismatches(tensor_signature, value, message):
    error = mismatch({"inputs": value}, tensor_signature)
    assert error.message == message
    assert error.field == "inputs"


@pytest.mark.parametrize(
    ("dtype", "good", "bad"),
    [
        ("int32", [[1, 2.0]], [[1, 2.5]]),
        ("uint8", [[0, 255]], [[0, 256]]),
        ("bool", [[True, False]], [[True, 1]]),
        ("str", [["a", "b"]], [["a", 1]]),
        ("float32", [[1, 2.5]], [[1, None]]),
    ],
)
def test_tensor_element_dtypes(dtype, good, bad):
    signature = stored(infer_signature(np.zeros((1, 2), dtype=dtype)))
    assert signature["inputs"][0]["tensor-spec"]["dtype"] == dtype
    signature_validate(payload_parse({"inputs": good}), signature)
    assert "elements" in mismatch({"inputs": bad}, signature).message


def test_named_tensors_are_checked_by_name():
    signature = {
        "inputs": [
            {"type": "tensor", "name": "a", "tensor-spec": {"dtype": "float64", "shape": [-1, 2]}},
            {"type": "tensor", "name": "b", "tensor-spec": {"dtype": "int64", "shape": [-1]}},
        ]
    }
    signature_validate(payload_parse({"inputs": {"a": [[1.0, 2.0]], "b": [3]}}), signature)
    assert mismatch({"inputs": {"a": [[1.0, 2.0]]}}, signature).message == "missing required input 'b'"
    assert mismatch({"inputs": {"a": [[1.0]], "b": [3]}}, signature).message == (
        "input 'a': expected shape (-1, 2), got (1, 1)"
    )
    assert mismatch({"inputs": {"a": [[1.0, 2.0]], "b": [3], "c": [1]}}, signature).message == "unknown input 'c'"
    assert "named tensors" in mismatch({"inputs": [[1.0, 2.0]]}, signature).message


def test_known_params_with_the_right_types_are_accepted(params_signature):
    signature_validate(payload_parse(split(COLUMNS, ROWS, params={"threshold": 1})), params_signature)
    signature_validate(payload_parse(split(COLUMNS, ROWS, params={"labels": ["x", "y"]})), params_signature)


@pytest.mark.parametrize(
    ("params", "message", "field"),
    [
        ({"temperature": 0.1}, "unknown param 'temperature'", "params.temperature"),
        ({"threshold": "high"}, "param 'threshold': expected double, got string", "params.threshold"),
        ({"threshold": False}, "param 'threshold': expected double, got boolean", "params.threshold"),
        ({"labels": "a"}, "param 'labels': expected a list of string, got string", "params.labels"),
        ({"labels": ["a", 2]}, "param 'labels' item 1: expected string, got integer", "params.labels"),
    ],
)
def test_param_refusals(params_signature, params, message, field):
    error = mismatch(split(COLUMNS, ROWS, params=params), params_signature)
    assert error.message == message
    assert error.field == field


def test_params_are_refused_by_a_model_that_takes_none(iris_signature):
    assert mismatch(split(COLUMNS, ROWS, params={"threshold": 0.5}), iris_signature).message == (
        "unknown param 'threshold'"
    )


def test_validation_is_linear_in_the_input():
    columns = [f"c{i}" for i in range(10)]
    signature = {"inputs": [{"type": "double", "name": name, "required": True} for name in columns]}
    parsed = payload_parse(split(columns, [[float(i)] * 10 for i in range(1000)]))
    started = time.perf_counter()
    signature_validate(parsed, signature)
    assert time.perf_counter() - started < 0.1


def test_nested_column_types():
    signature = {
        "inputs": [
            {"type": "array", "items": {"type": "double"}, "name": "vector", "required": True},
            {"type": "object", "properties": {"k": {"type": "string", "required": True}}, "name": "meta"},
            {"type": "map", "values": {"type": "long"}, "name": "counts", "required": False},
        ]
    }
    good = {"vector": [1.0, 2], "meta": {"k": "v"}, "counts": {"a": 1}}
    signature_validate(payload_parse({"dataframe_records": [good]}), signature)
    for column, value, message in (
        ("vector", [1.0, "x"], "column 'vector' row 0: expected array of double, got array"),
        ("meta", {"k": "v", "extra": 1}, "column 'meta' row 0: expected object, got object"),
        ("meta", {}, "column 'meta' row 0: expected object, got object"),
        ("counts", {"a": 1.5}, "column 'counts' row 0: expected map, got object"),
    ):
        assert mismatch({"dataframe_records": [{**good, column: value}]}, signature).message == message
