"""The Open Inference Protocol (KServe v2 / Triton gRPC) beside seqserve.v1, on the same port."""

from __future__ import annotations

from .core_facade import Core
from .handlers import SERVICE_NAME, add_to_server
from .reflection import reflection_pool
from .servicer import OpenInferenceServicer

__all__ = ["SERVICE_NAME", "Core", "OpenInferenceServicer", "add_to_server", "reflection_pool"]
