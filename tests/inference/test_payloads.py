"""The MLflow scoring forms: each accepted and normalised, everything else refused with the field named."""

import json
from pathlib import Path

import pytest

from apps.inference.payloads import MAX_ROWS, ParsedInput, PayloadError, payload_parse, tensor_shape

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
SPLIT_BODY = {"dataframe_split": {"columns": COLUMNS, "data": ROWS}}
EXAMPLE = Path(__file__).resolve().parents[2] / "example.json"


def refused(body: object) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        payload_parse(body)
    return caught.value


def test_dataframe_split_is_parsed_into_columns_and_rows():
    parsed = payload_parse({**SPLIT_BODY, "params": {"threshold": 0.5}})
    assert parsed.form == "dataframe_split"
    assert parsed.kind == "tabular"
    assert parsed.columns == tuple(COLUMNS)
    assert parsed.rows == ((5.1, 3.5, 1.4, 0.2), (6.7, 3.0, 5.2, 2.3))
    assert parsed.tensor is None
    assert parsed.params == {"threshold": 0.5}
    assert parsed.row_count == 2
    assert parsed.to_mlflow_body() == {**SPLIT_BODY, "params": {"threshold": 0.5}}


def test_dataframe_split_index_is_accepted_and_not_forwarded():
    parsed = payload_parse({"dataframe_split": {**SPLIT_BODY["dataframe_split"], "index": [10, 11]}})
    assert parsed.to_mlflow_body() == SPLIT_BODY


def test_dataframe_records_are_normalised_to_split():
    records = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]
    parsed = payload_parse({"dataframe_records": records})
    assert parsed.form == "dataframe_records"
    assert parsed.columns == tuple(COLUMNS)
    assert parsed.row_count == 2
    assert parsed.to_mlflow_body() == SPLIT_BODY


def test_records_with_missing_keys_get_nulls_and_keep_first_seen_column_order():
    parsed = payload_parse({"dataframe_records": [{"a": 1}, {"b": "x", "a": 2}]})
    assert parsed.columns == ("a", "b")
    assert parsed.rows == ((1, None), (2, "x"))


def test_instances_of_objects_are_tabular():
    parsed = payload_parse({"instances": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]})
    assert parsed.form == "instances"
    assert parsed.kind == "tabular"
    assert parsed.to_mlflow_body() == {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}}


def test_instances_of_lists_are_a_tensor():
    parsed = payload_parse({"instances": ROWS, "params": {"k": 1}})
    assert parsed.kind == "tensor"
    assert parsed.columns is None
    assert parsed.rows is None
    assert parsed.shape == (2, 4)
    assert parsed.row_count == 2
    assert parsed.to_mlflow_body() == {"inputs": ROWS, "params": {"k": 1}}


def test_instances_of_scalars_are_a_vector():
    parsed = payload_parse({"instances": [1, 2, 3]})
    assert parsed.shape == (3,)
    assert parsed.to_mlflow_body() == {"inputs": [1, 2, 3]}


def test_inputs_list_is_a_tensor():
    parsed = payload_parse({"inputs": [[[1, 2], [3, 4]]]})
    assert parsed.form == "inputs"
    assert parsed.shape == (1, 2, 2)
    assert parsed.row_count == 1
    assert parsed.to_mlflow_body() == {"inputs": [[[1, 2], [3, 4]]]}


def test_inputs_object_is_columns_of_values():
    parsed = payload_parse({"inputs": {name: [row[i] for row in ROWS] for i, name in enumerate(COLUMNS)}})
    assert parsed.kind == "tabular"
    assert parsed.columns == tuple(COLUMNS)
    assert parsed.row_count == 2
    assert parsed.to_mlflow_body() == SPLIT_BODY


def test_parsed_input_is_immutable():
    parsed = payload_parse(SPLIT_BODY)
    assert isinstance(parsed, ParsedInput)
    with pytest.raises(AttributeError):
        parsed.form = "inputs"


def test_example_file_parses():
    parsed = payload_parse(json.loads(EXAMPLE.read_text()))
    assert parsed.columns == tuple(COLUMNS)
    assert parsed.row_count == 2


BAD = "invalid_payload"
RAGGED = "ragged_input"


def split(columns: object, data: object, **extra) -> dict:
    return {"dataframe_split": {"columns": columns, "data": data, **extra}}


@pytest.mark.parametrize(
    ("body", "code", "field", "message"),
    [
        ([1, 2], BAD, None, "JSON object"),
        ("text", BAD, None, "JSON object"),
        ({}, BAD, None, "one of"),
        ({"params": {}}, BAD, None, "one of"),
        ({"inputs": [1], "instances": [1]}, BAD, "inputs", "only one of"),
        ({"inputs": [1], "extra": 1}, BAD, "extra", "Unknown field 'extra'"),
        ({"inputs": [1], "params": [1]}, BAD, "params", "'params' must be an object"),
        ({"dataframe_split": [[1]]}, BAD, "dataframe_split", "must be an object"),
        ({"dataframe_split": {"data": [[1]]}}, BAD, "dataframe_split.columns", "'columns'"),
        (split([], [[1]]), BAD, "dataframe_split.columns", "'columns'"),
        (split(["a", 1], [[1, 2]]), BAD, "dataframe_split.columns[1]", "string"),
        (split(["a", "a"], [[1, 2]]), BAD, "dataframe_split.columns[1]", "twice"),
        (split(["a"], {"a": 1}), BAD, "dataframe_split.data", "list of rows"),
        (split(["a"], []), BAD, "dataframe_split.data", "At least one row"),
        (split(["a"], [[1], 2]), BAD, "dataframe_split.data[1]", "Row 1 must be a list"),
        (split(["a", "b"], [[1, 2], [3]]), RAGGED, "dataframe_split.data[1]", "1 values for 2 columns"),
        (split(["a"], [[1]], index=[1, 2]), BAD, "dataframe_split.index", "one label per row"),
        (split(["a"], [[1]], orient="split"), BAD, "dataframe_split.orient", "Unknown field"),
        ({"dataframe_records": {"a": 1}}, BAD, "dataframe_records", "list of objects"),
        ({"dataframe_records": [{"a": 1}, [1]]}, BAD, "dataframe_records[1]", "Record 1 must be an object"),
        ({"dataframe_records": [{}]}, BAD, "dataframe_records", "no columns"),
        ({"instances": {"a": [1]}}, BAD, "instances", "must be a list"),
        ({"instances": [{"a": 1}, [1]]}, BAD, "instances", "all objects or no objects"),
        ({"instances": [[1, 2], [3]]}, RAGGED, "instances[1]", "ragged"),
        ({"instances": [[1, 2], 3]}, RAGGED, "instances[1]", "ragged"),
        ({"inputs": [[[1], [2]], [[1], 2]]}, RAGGED, "inputs[1][1]", "ragged"),
        ({"inputs": 5}, BAD, "inputs", "a list (a tensor) or an object of columns"),
        ({"inputs": []}, BAD, "inputs", "At least one row"),
        ({"inputs": {}}, BAD, "inputs", "no columns"),
        ({"inputs": {"a": 1}}, BAD, "inputs.a", "Column 'a' must be a list"),
        ({"inputs": {"a": [1, 2], "b": [1]}}, RAGGED, "inputs.b", "Column 'b' has 1 values, expected 2"),
    ],
)
def test_malformed_bodies_are_refused_naming_the_field(body, code, field, message):
    error = refused(body)
    assert error.code == code
    assert error.field == field
    assert message in error.message
    assert str(error) == error.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (split(["a"], [[1]] * (MAX_ROWS + 1)), "dataframe_split.data"),
        ({"dataframe_records": [{"a": 1}] * (MAX_ROWS + 1)}, "dataframe_records"),
        ({"instances": [1] * (MAX_ROWS + 1)}, "instances"),
        ({"inputs": [1] * (MAX_ROWS + 1)}, "inputs"),
        ({"inputs": {"a": [1] * (MAX_ROWS + 1)}}, "inputs.a"),
    ],
)
def test_more_than_max_rows_is_refused_in_every_form(body, field):
    error = refused(body)
    assert error.code == "too_many_rows"
    assert error.field == field
    assert f"{MAX_ROWS + 1}" in error.message


def test_exactly_max_rows_is_accepted():
    assert payload_parse({"instances": [1] * MAX_ROWS}).row_count == MAX_ROWS


def test_nesting_too_deep_is_refused():
    value: list = [1]
    for _ in range(40):
        value = [value]
    with pytest.raises(PayloadError, match="levels deep"):
        tensor_shape(value, "inputs")


def test_tensor_shape_of_empty_and_scalar_values():
    assert tensor_shape(3, "inputs") == ()
    assert tensor_shape([], "inputs") == (0,)
    assert tensor_shape([[], []], "inputs") == (2, 0)
