"""MLflow's pyfunc scoring server (`mlflow models serve`, MLflow 2 and 3): `POST /invocations`."""

from __future__ import annotations

from apps.inference.adapters.base import ProtocolAdapter, UpstreamAnswer, UpstreamFailed, UpstreamRequest, upstream_post


class MlflowAdapter(ProtocolAdapter):
    """Sends the normalised body (`dataframe_split` or `inputs`) and returns the answer's `predictions`."""

    name = "mlflow"
    health_path = "/ping"

    def predict(self, request: UpstreamRequest) -> UpstreamAnswer:
        """One scoring call; the server answers `{"predictions": ...}`, anything else is unreadable."""
        body, status, elapsed_ms = upstream_post(request, "/invocations", request.parsed.to_mlflow_body())
        if not isinstance(body, dict) or "predictions" not in body:
            raise UpstreamFailed("The model server's answer has no 'predictions'.")
        return UpstreamAnswer(body["predictions"], status, elapsed_ms, request.base_url)
