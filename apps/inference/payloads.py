"""The input forms of MLflow's pyfunc scoring server, parsed once and normalised before they are forwarded.

A client may send any form MLflow accepts; the portal checks it here, before a model server is ever
called, so a malformed request costs no model time and gets an error that names the offending field.
What is forwarded is always one of two forms (`dataframe_split` for tables, `inputs` for tensors), so
the model server, the signature check and the compliance record each see one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ROWS = 10_000
MAX_DEPTH = 32
FORMS = ("dataframe_split", "dataframe_records", "instances", "inputs")
TABULAR = "tabular"
TENSOR = "tensor"


class PayloadError(Exception):
    """A request body the portal refuses, with a stable code and the field that caused it."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ParsedInput:
    """One scoring request, checked: a table (`columns` and `rows`) or a tensor (`tensor` and `shape`)."""

    form: str
    columns: tuple[str, ...] | None
    rows: tuple[tuple, ...] | None
    tensor: object
    params: dict
    row_count: int
    shape: tuple[int, ...] | None = field(default=None)

    @property
    def kind(self) -> str:
        """`tabular` or `tensor`: what the model receives, whichever form the client used."""
        return TABULAR if self.columns is not None else TENSOR

    def to_mlflow_body(self) -> dict:
        """The body for MLflow's `/invocations`: `dataframe_split` for tables, `inputs` for tensors."""
        if self.kind == TABULAR:
            body: dict = {"dataframe_split": {"columns": list(self.columns), "data": [list(row) for row in self.rows]}}
        else:
            body = {"inputs": self.tensor}
        if self.params:
            body["params"] = dict(self.params)
        return body


def payload_parse(body: object) -> ParsedInput:
    """Check a decoded JSON body against MLflow's scoring forms; raise `PayloadError` naming the field."""
    if not isinstance(body, dict):
        raise PayloadError("invalid_payload", "The body must be a JSON object.", None)
    forms = [key for key in FORMS if key in body]
    unknown = sorted(str(key) for key in body if key not in FORMS and key != "params")
    if unknown:
        raise PayloadError("invalid_payload", f"Unknown field '{unknown[0]}'.", unknown[0])
    if not forms:
        raise PayloadError("invalid_payload", f"The body must contain one of: {', '.join(FORMS)}.", None)
    if len(forms) > 1:
        raise PayloadError("invalid_payload", f"The body must contain only one of: {', '.join(forms)}.", forms[1])
    form = forms[0]
    params = _params_parse(body.get("params"))
    return _PARSERS[form](body[form], params)


def tensor_shape(value: object, field: str) -> tuple[int, ...]:
    """The shape of nested lists as numpy would see it; ragged nesting is refused rather than made an object array."""
    return _shape(value, field, 0)


def _shape(value: object, field: str, depth: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if depth >= MAX_DEPTH:
        raise PayloadError("invalid_payload", f"Nested more than {MAX_DEPTH} levels deep.", field)
    if not value:
        return (0,)
    first = _shape(value[0], f"{field}[0]", depth + 1)
    for index in range(1, len(value)):
        item = value[index]
        if not first and not isinstance(item, list):
            continue
        if _shape(item, f"{field}[{index}]", depth + 1) != first:
            raise PayloadError(
                "ragged_input", f"Element {index} has a different shape from element 0 (ragged).", f"{field}[{index}]"
            )
    return (len(value), *first)


def _params_parse(params: object) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise PayloadError("invalid_payload", "'params' must be an object.", "params")
    return dict(params)


def _row_limit(count: int, field: str) -> None:
    if count == 0:
        raise PayloadError("invalid_payload", "At least one row is needed.", field)
    if count > MAX_ROWS:
        raise PayloadError("too_many_rows", f"At most {MAX_ROWS} rows per request (got {count}).", field)


def _split_parse(value: object, params: dict) -> ParsedInput:
    if not isinstance(value, dict):
        raise PayloadError("invalid_payload", "'dataframe_split' must be an object.", "dataframe_split")
    unknown = sorted(str(key) for key in value if key not in ("columns", "data", "index"))
    if unknown:
        raise PayloadError("invalid_payload", f"Unknown field '{unknown[0]}'.", f"dataframe_split.{unknown[0]}")
    columns = _columns_check(value.get("columns"), "dataframe_split.columns")
    data = value.get("data")
    if not isinstance(data, list):
        raise PayloadError("invalid_payload", "'data' must be a list of rows.", "dataframe_split.data")
    _row_limit(len(data), "dataframe_split.data")
    width = len(columns)
    for index, row in enumerate(data):
        if not isinstance(row, list):
            raise PayloadError("invalid_payload", f"Row {index} must be a list.", f"dataframe_split.data[{index}]")
        if len(row) != width:
            raise PayloadError(
                "ragged_input",
                f"Row {index} has {len(row)} values for {width} columns.",
                f"dataframe_split.data[{index}]",
            )
    index_labels = value.get("index")
    if index_labels is not None and (not isinstance(index_labels, list) or len(index_labels) != len(data)):
        raise PayloadError("invalid_payload", "'index' must be a list with one label per row.", "dataframe_split.index")
    rows = tuple(tuple(row) for row in data)
    return ParsedInput("dataframe_split", columns, rows, None, params, len(rows))


def _columns_check(columns: object, field: str) -> tuple[str, ...]:
    if not isinstance(columns, list) or not columns:
        raise PayloadError("invalid_payload", "'columns' must be a non-empty list of names.", field)
    seen: set[str] = set()
    for index, name in enumerate(columns):
        if not isinstance(name, str):
            raise PayloadError("invalid_payload", f"Column {index} must be a string.", f"{field}[{index}]")
        if name in seen:
            raise PayloadError("invalid_payload", f"Column '{name}' appears twice.", f"{field}[{index}]")
        seen.add(name)
    return tuple(columns)


def _records_parse(value: object, params: dict, form: str = "dataframe_records") -> ParsedInput:
    if not isinstance(value, list):
        raise PayloadError("invalid_payload", f"'{form}' must be a list of objects.", form)
    _row_limit(len(value), form)
    names: dict[str, None] = {}
    for index, record in enumerate(value):
        if not isinstance(record, dict):
            raise PayloadError("invalid_payload", f"Record {index} must be an object.", f"{form}[{index}]")
        for name in record:
            if name not in names:
                if not isinstance(name, str):
                    raise PayloadError("invalid_payload", "Column names must be strings.", f"{form}[{index}]")
                names[name] = None
    columns = tuple(names)
    if not columns:
        raise PayloadError("invalid_payload", "The records have no columns.", form)
    rows = tuple(tuple(record.get(name) for name in columns) for record in value)
    return ParsedInput(form, columns, rows, None, params, len(rows))


def _instances_parse(value: object, params: dict) -> ParsedInput:
    if not isinstance(value, list):
        raise PayloadError("invalid_payload", "'instances' must be a list.", "instances")
    _row_limit(len(value), "instances")
    dicts = sum(1 for item in value if isinstance(item, dict))
    if dicts == len(value):
        return _records_parse(value, params, "instances")
    if dicts:
        raise PayloadError("invalid_payload", "'instances' must be all objects or no objects.", "instances")
    return ParsedInput("instances", None, None, value, params, len(value), tensor_shape(value, "instances"))


def _inputs_parse(value: object, params: dict) -> ParsedInput:
    if isinstance(value, list):
        _row_limit(len(value), "inputs")
        return ParsedInput("inputs", None, None, value, params, len(value), tensor_shape(value, "inputs"))
    if not isinstance(value, dict):
        raise PayloadError("invalid_payload", "'inputs' must be a list (a tensor) or an object of columns.", "inputs")
    if not value:
        raise PayloadError("invalid_payload", "'inputs' has no columns.", "inputs")
    length = None
    for name, values in value.items():
        if not isinstance(values, list):
            raise PayloadError("invalid_payload", f"Column '{name}' must be a list of values.", f"inputs.{name}")
        if length is None:
            length = len(values)
            _row_limit(length, f"inputs.{name}")
        elif len(values) != length:
            raise PayloadError(
                "ragged_input", f"Column '{name}' has {len(values)} values, expected {length}.", f"inputs.{name}"
            )
    columns = tuple(value)
    rows = tuple(zip(*(value[name] for name in columns), strict=True))
    return ParsedInput("inputs", columns, rows, None, params, len(rows))


_PARSERS = {
    "dataframe_split": _split_parse,
    "dataframe_records": _records_parse,
    "instances": _instances_parse,
    "inputs": _inputs_parse,
}
