"""gRPC channel options for callers that must ride out a server stopping or restarting."""

from __future__ import annotations

import json

RETRY_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "seqserve.v1.SeqServe"}],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})  # fmt: skip
RETRYING = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_CONFIG)]
