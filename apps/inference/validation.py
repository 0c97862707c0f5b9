"""Checking a parsed request against the model version's MLflow signature, before the model server is called.

The signature is the registry's copy (`ModelVersion.signature`): MLflow's `inputs`, `outputs` and `params`
parsed from their JSON strings. A request that does not fit is refused here with the column, row or param
it got wrong, instead of reaching the model server and coming back as an opaque 500 from pandas or numpy.
The checks run column by column with one type test per value, so they stay linear in the size of the input.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from datetime import datetime

from apps.inference.payloads import ParsedInput, PayloadError, tensor_shape

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class SignatureMismatch(PayloadError):
    """The request is well formed but is not what this model version takes."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__("signature_mismatch", message, field)


def signature_validate(parsed: ParsedInput, signature: dict | None) -> None:
    """Refuse input that the model's signature rules out; a model without a signature accepts anything."""
    if not signature:
        return
    inputs = signature.get("inputs")
    if inputs:
        if any(spec.get("type") == "tensor" for spec in inputs):
            _tensor_schema_validate(parsed, inputs)
        else:
            _column_schema_validate(parsed, inputs)
    _params_validate(parsed.params, signature.get("params") or [])


def _describe(value: object) -> str:
    """A value's JSON type, as a client would name it."""
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _integral(low: int, high: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        kind = type(value)
        if kind is int:
            return low <= value <= high
        return kind is float and value.is_integer() and low <= value <= high

    return check


def _is_base64(value: object) -> bool:
    if type(value) is not str:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_datetime(value: object) -> bool:
    if type(value) is not str:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_NUMBER = frozenset({int, float})
_SCALAR_CHECKS: dict[str, Callable[[object], bool]] = {
    "double": lambda value: type(value) in _NUMBER,
    "float": lambda value: type(value) in _NUMBER,
    "long": _integral(*_INT64),
    "integer": _integral(*_INT32),
    "boolean": lambda value: type(value) is bool,
    "string": lambda value: type(value) is str,
    "binary": _is_base64,
    "datetime": _is_datetime,
    "any": lambda value: True,
}


def _type_name(spec: dict) -> str:
    kind = spec.get("type")
    if kind == "array":
        return f"array of {_type_name(spec.get('items') or {})}"
    return str(kind)


def _checker(spec: dict) -> Callable[[object], bool]:
    """A predicate for one MLflow column type, nested types (array, object, map) included."""
    kind = spec.get("type")
    if kind in _SCALAR_CHECKS:
        return _SCALAR_CHECKS[kind]
    if kind == "array":
        item = _checker(spec.get("items") or {})
        return lambda value: type(value) is list and all(item(element) for element in value)
    if kind == "object":
        properties = {
            name: (_checker(prop), prop.get("required", True)) for name, prop in (spec.get("properties") or {}).items()
        }

        def check_object(value: object) -> bool:
            if type(value) is not dict or not set(value) <= set(properties):
                return False
            for name, (check, required) in properties.items():
                element = value.get(name)
                if element is None:
                    if required:
                        return False
                elif not check(element):
                    return False
            return True

        return check_object
    if kind == "map":
        values = _checker(spec.get("values") or {})
        return lambda value: type(value) is dict and all(values(element) for element in value.values())
    return _SCALAR_CHECKS["any"]


def _column_schema_validate(parsed: ParsedInput, specs: list[dict]) -> None:
    if parsed.columns is None:
        names = ", ".join(str(spec.get("name")) for spec in specs)
        raise SignatureMismatch(
            f"This model takes named columns ({names}); send dataframe_split, dataframe_records, "
            "or inputs as an object of columns.",
            parsed.form,
        )
    if all("name" in spec for spec in specs):
        by_name = {spec["name"]: spec for spec in specs}
        for name in parsed.columns:
            if name not in by_name:
                raise SignatureMismatch(f"unknown column '{name}'", name)
        present = set(parsed.columns)
        for spec in specs:
            if spec.get("required", True) and spec["name"] not in present:
                raise SignatureMismatch(f"missing required column '{spec['name']}'", spec["name"])
        pairs = [(index, name, by_name[name]) for index, name in enumerate(parsed.columns)]
    else:
        if len(parsed.columns) != len(specs):
            raise SignatureMismatch(f"expected {len(specs)} columns, got {len(parsed.columns)}", parsed.form)
        pairs = [(index, name, specs[index]) for index, name in enumerate(parsed.columns)]
    for index, name, spec in pairs:
        _column_values_check(name, (row[index] for row in parsed.rows), spec)


def _column_values_check(name: str, values: Iterable[object], spec: dict) -> None:
    check = _checker(spec)
    required = spec.get("required", True)
    for row, value in enumerate(values):
        if value is None:
            if required:
                raise SignatureMismatch(f"column '{name}' row {row}: expected {_type_name(spec)}, got null", name)
        elif not check(value):
            raise SignatureMismatch(
                f"column '{name}' row {row}: expected {_type_name(spec)}, got {_describe(value)}", name
            )


def _tensor_element_check(dtype: str) -> Callable[[object], bool]:
    """Which JSON leaves a numpy dtype accepts, the way MLflow casts them before predicting."""
    if dtype.startswith("float"):
        return _SCALAR_CHECKS["double"]
    if dtype.startswith("uint"):
        bits = int(dtype[4:]) if dtype[4:].isdigit() else 64
        return _integral(0, 2**bits - 1)
    if dtype.startswith("int"):
        bits = int(dtype[3:]) if dtype[3:].isdigit() else 64
        return _integral(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if dtype == "bool":
        return _SCALAR_CHECKS["boolean"]
    if dtype in ("str", "bytes"):
        return _SCALAR_CHECKS["string"]
    return _SCALAR_CHECKS["any"]


def _leaves(value: object) -> Iterable[object]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _tensor_check(value: object, shape: tuple[int, ...], spec: dict, field: str, label: str) -> None:
    tensor_spec = spec.get("tensor-spec") or {}
    expected = tuple(tensor_spec.get("shape") or ())
    if len(shape) != len(expected) or any(want not in (-1, got) for want, got in zip(expected, shape, strict=True)):
        raise SignatureMismatch(
            f"{label}: expected shape {_shape_text(expected)}, got {_shape_text(shape)}",
            field,
        )
    dtype = str(tensor_spec.get("dtype", "object"))
    check = _tensor_element_check(dtype)
    for leaf in _leaves(value):
        if not check(leaf):
            raise SignatureMismatch(f"{label}: expected {dtype} elements, got {_describe(leaf)}", field)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(dim) for dim in shape) + ")"


def _tensor_schema_validate(parsed: ParsedInput, specs: list[dict]) -> None:
    if parsed.columns is None:
        if len(specs) != 1:
            names = ", ".join(str(spec.get("name")) for spec in specs)
            raise SignatureMismatch(f"This model takes named tensors ({names}); send inputs as an object.", parsed.form)
        _tensor_check(parsed.tensor, parsed.shape or (), specs[0], parsed.form, "input")
        return
    if len(specs) == 1 and "name" not in specs[0]:
        matrix = [list(row) for row in parsed.rows]
        _tensor_check(matrix, tensor_shape(matrix, parsed.form), specs[0], parsed.form, "input")
        return
    by_name = {spec.get("name"): spec for spec in specs}
    for name in parsed.columns:
        if name not in by_name:
            raise SignatureMismatch(f"unknown input '{name}'", name)
    for name in by_name:
        if name not in parsed.columns:
            raise SignatureMismatch(f"missing required input '{name}'", name)
    for index, name in enumerate(parsed.columns):
        values = [row[index] for row in parsed.rows]
        _tensor_check(values, tensor_shape(values, name), by_name[name], name, f"input '{name}'")


def _params_validate(params: dict, specs: list[dict]) -> None:
    by_name = {spec["name"]: spec for spec in specs}
    for name, value in params.items():
        spec = by_name.get(name)
        field = f"params.{name}"
        if spec is None:
            raise SignatureMismatch(f"unknown param '{name}'", field)
        kind = spec.get("type")
        check = _SCALAR_CHECKS.get(kind, _SCALAR_CHECKS["any"])
        if spec.get("shape") is None:
            if not check(value):
                raise SignatureMismatch(f"param '{name}': expected {kind}, got {_describe(value)}", field)
        elif type(value) is not list:
            raise SignatureMismatch(f"param '{name}': expected a list of {kind}, got {_describe(value)}", field)
        else:
            for index, element in enumerate(value):
                if not check(element):
                    raise SignatureMismatch(
                        f"param '{name}' item {index}: expected {kind}, got {_describe(element)}", field
                    )
