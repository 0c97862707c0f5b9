"""The protocol adapters, one per model server protocol, found by the server's `protocol` field."""

from apps.inference.adapters.base import (
    ProtocolAdapter,
    UpstreamAnswer,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from apps.inference.adapters.kserve import KServeAdapter
from apps.inference.adapters.mlflow import MlflowAdapter
from apps.inference.adapters.openai import OpenAIAdapter

ADAPTERS: dict[str, ProtocolAdapter] = {
    MlflowAdapter.name: MlflowAdapter(),
    KServeAdapter.name: KServeAdapter(),
    OpenAIAdapter.name: OpenAIAdapter(),
}


def adapter_for(protocol: str) -> ProtocolAdapter:
    """The adapter for a server's protocol; an unknown protocol is a configuration error, raised as `KeyError`."""
    try:
        return ADAPTERS[protocol]
    except KeyError:
        raise KeyError(f"No adapter for protocol '{protocol}'.") from None


__all__ = [
    "ADAPTERS",
    "KServeAdapter",
    "MlflowAdapter",
    "OpenAIAdapter",
    "ProtocolAdapter",
    "UpstreamAnswer",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamRejected",
    "UpstreamRequest",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "adapter_for",
]
