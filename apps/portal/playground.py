"""What the playground puts in front of a person: a request body that fits a model version's MLflow signature,
and the curl command that sends it.

A body built from the signature passes the predict API's own signature check as it is, so the first "Send" shows
the model answering rather than a 422, and the person only edits values. Pure functions over the registry's copy
of the signature (`ModelVersion.signature`: MLflow's `inputs`, `outputs` and `params`, each parsed from JSON).
"""

from __future__ import annotations

import json
import math

# A larger tensor (an image, say) would put megabytes of zeros in a text box: leave it to the person.
MAX_EXAMPLE_ELEMENTS = 10_000
EXAMPLE_DATETIME = "2024-01-01T00:00:00"

_COLUMN_EXAMPLES: dict[str, object] = {
    "double": 0.0,
    "float": 0.0,
    "long": 0,
    "integer": 0,
    "boolean": False,
    "string": "",
    "binary": "",  # the base64 of no bytes
    "datetime": EXAMPLE_DATETIME,
    "any": "",
}


def example_body(signature: dict | None) -> dict:
    """A predict body with one row of placeholder values: `dataframe_split` for columns, `inputs` for tensors.

    Without input specs (no signature, or one without inputs) there is nothing to go by: `{"inputs": []}`, and
    `example_hint` says so. Params the signature declares are included with their defaults.
    """
    specs = _input_specs(signature)
    if not specs:
        body: dict = {"inputs": []}
    elif any(spec.get("type") == "tensor" for spec in specs):
        body = {"inputs": _tensor_inputs(specs)} if _tensor_elements(specs) <= MAX_EXAMPLE_ELEMENTS else {"inputs": []}
    else:
        columns = [str(spec.get("name", index)) for index, spec in enumerate(specs)]
        body = {"dataframe_split": {"columns": columns, "data": [[_column_example(spec) for spec in specs]]}}
    params = _params_example(signature)
    if params:
        body["params"] = params
    return body


def example_hint(signature: dict | None) -> str:
    """Why the body of `example_body` is empty, or "" when it is a complete example."""
    specs = _input_specs(signature)
    if not specs:
        return (
            "This version has no input signature, so there is nothing to prefill: write the body the model "
            "expects (dataframe_split, dataframe_records, instances or inputs)."
        )
    tensors = [spec for spec in specs if spec.get("type") == "tensor"]
    if tensors and _tensor_elements(specs) > MAX_EXAMPLE_ELEMENTS:
        shapes = ", ".join(_shape_text(_shape(spec)) for spec in tensors)
        return f"The input tensor ({shapes}) is too large to prefill: fill in inputs yourself."
    return ""


def body_text(body: dict) -> str:
    """The body as the text box shows it, and as the curl command sends it."""
    return json.dumps(body, indent=2)


def shell_quote(text: str) -> str:
    """`text` as one single-quoted POSIX shell word (the same quoting the page's script applies after an edit)."""
    return "'" + text.replace("'", "'\\''") + "'"


def _input_specs(signature: dict | None) -> list[dict]:
    inputs = signature.get("inputs") if isinstance(signature, dict) else None
    return [spec for spec in inputs if isinstance(spec, dict)] if isinstance(inputs, list) else []


def _column_example(spec: dict) -> object:
    kind = spec.get("type")
    if kind in _COLUMN_EXAMPLES:
        return _COLUMN_EXAMPLES[kind]
    if kind == "array":
        return [_column_example(spec.get("items") or {})]
    if kind == "object":
        return {name: _column_example(prop) for name, prop in (spec.get("properties") or {}).items()}
    if kind == "map":
        return {}
    return ""


def _shape(spec: dict) -> tuple[int, ...]:
    shape = (spec.get("tensor-spec") or {}).get("shape") or ()
    return tuple(int(dim) for dim in shape if isinstance(dim, int))


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(dim) for dim in shape) + ")"


def _concrete(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One example of a shape: each variable dimension (-1) becomes one row."""
    return tuple(dim if dim > 0 else 1 for dim in shape)


def _tensor_elements(specs: list[dict]) -> int:
    return sum(math.prod(_concrete(_shape(spec))) for spec in specs)


def _tensor_leaf(spec: dict) -> object:
    dtype = str((spec.get("tensor-spec") or {}).get("dtype", ""))
    if dtype.startswith("float"):
        return 0.0
    if dtype == "bool":
        return False
    if dtype in ("str", "bytes"):
        return ""
    return 0


def _zeros(shape: tuple[int, ...], leaf: object) -> object:
    if not shape:
        return leaf
    return [_zeros(shape[1:], leaf) for _ in range(shape[0])]


def _tensor_inputs(specs: list[dict]) -> object:
    """One tensor as a nested list; several (named) tensors as an object of them."""
    if len(specs) == 1:
        tensor = _zeros(_concrete(_shape(specs[0])), _tensor_leaf(specs[0]))
        return tensor if isinstance(tensor, list) else [tensor]
    return {
        str(spec.get("name", index)): _zeros(_concrete(_shape(spec)), _tensor_leaf(spec))
        for index, spec in enumerate(specs)
    }


def _params_example(signature: dict | None) -> dict:
    params = signature.get("params") if isinstance(signature, dict) else None
    example = {}
    for spec in params if isinstance(params, list) else []:
        if isinstance(spec, dict) and spec.get("name"):
            default = spec.get("default")
            if default is None:
                default = _column_example(spec) if spec.get("shape") is None else [_column_example(spec)]
            example[spec["name"]] = default
    return example
