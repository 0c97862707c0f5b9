"""The Open Inference Protocol (KServe v2: Triton, MLServer, KServe): `POST /v2/models/{name}/infer`.

A table is sent as one input tensor per column with `"content_type": "pd"`, which is how MLServer's sklearn and
mlflow runtimes rebuild a pandas DataFrame; a tensor is sent as a single flattened input. The translation is
kept in pure functions so it can be checked without a server.
"""

from __future__ import annotations

import math
from urllib.parse import quote

from apps.inference.adapters.base import ProtocolAdapter, UpstreamAnswer, UpstreamFailed, UpstreamRequest, upstream_post
from apps.inference.payloads import TABULAR, ParsedInput

TENSOR_INPUT_NAME = "input-0"


def kserve_request_body(parsed: ParsedInput) -> dict:
    """The v2 inference request for a checked input; client `params` travel as request parameters."""
    if parsed.kind == TABULAR:
        inputs = [
            _tensor(name, [len(parsed.rows)], [row[index] for row in parsed.rows])
            for index, name in enumerate(parsed.columns)
        ]
        parameters = {**parsed.params, "content_type": "pd"}
    else:
        shape = list(parsed.shape or ())
        inputs = [_tensor(TENSOR_INPUT_NAME, shape, _flatten(parsed.tensor))]
        parameters = dict(parsed.params)
    body: dict = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return body


def kserve_output(body: dict) -> object:
    """The model's output from a v2 response: one output's data in its shape, or a dict of them by name.

    Raises `ValueError` for a body that is not a v2 response, so the adapter can report it as unreadable.
    """
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ValueError("The answer has no 'outputs'.")
    shaped = {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("data"), list):
            raise ValueError("An output has no 'data'.")
        shaped[str(output.get("name", ""))] = _reshape(_flatten(output["data"]), output.get("shape"))
    if len(outputs) == 1:
        return next(iter(shaped.values()))
    return shaped


class KServeAdapter(ProtocolAdapter):
    """Calls a v2 server by model name, and by version when the deployment names one."""

    name = "kserve-v2"
    health_path = "/v2/health/ready"

    def predict(self, request: UpstreamRequest) -> UpstreamAnswer:
        """One inference call; an answer that is not a v2 response is reported as an upstream failure."""
        path = f"/v2/models/{quote(request.model_name, safe='')}"
        if request.version is not None:
            path += f"/versions/{request.version}"
        body, status, elapsed_ms = upstream_post(request, f"{path}/infer", kserve_request_body(request.parsed))
        try:
            output = kserve_output(body)
        except ValueError as exc:
            raise UpstreamFailed(f"The model server's answer is unreadable: {exc}") from exc
        return UpstreamAnswer(output, status, elapsed_ms, request.base_url)


def _tensor(name: str, shape: list[int], data: list) -> dict:
    datatype = _datatype(data)
    if datatype == "FP64":
        data = [float(value) for value in data]
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _datatype(values: list) -> str:
    """The narrowest v2 type holding every value; bool is checked first since it is a subclass of int."""
    if values and all(isinstance(value, bool) for value in values):
        return "BOOL"
    if values and all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        return "INT64"
    if values and all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
        return "FP64"
    return "BYTES"


def _flatten(value: object) -> list:
    if not isinstance(value, list):
        return [value]
    flat: list = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _reshape(data: list, shape: object) -> object:
    if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise ValueError("An output has no valid 'shape'.")
    if math.prod(shape) != len(data):
        raise ValueError(f"An output's shape {shape} does not match its {len(data)} values.")
    if not shape:
        return data[0]
    for size in reversed(shape[1:]):
        data = [data[start : start + size] for start in range(0, len(data), size)] if size else []
    return data
