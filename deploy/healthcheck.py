"""Container health probe: the standard gRPC health service (grpc.health.v1.Health/Check).

Exit 0 when the server reports SERVING for SERVICE (default "": the whole server), else 1.
Used by the Dockerfile HEALTHCHECK; needs only grpcio + grpcio-health-checking (in the image).
Usage: python healthcheck.py [SERVICE]   (target: 127.0.0.1:$SEQSERVE_PORT, timeout 3 s)

TLS when HEALTHCHECK_CA is set (the CA of the server's certificate, PEM); mutual TLS when
HEALTHCHECK_CERT and HEALTHCHECK_KEY are set too. Health needs no token (the server keeps it open).
"""

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    return Path(path).read_bytes() if path else None


def channel(target: str) -> grpc.Channel:
    """Plaintext, or TLS/mTLS as the HEALTHCHECK_* variables say."""
    ca = _read("HEALTHCHECK_CA")
    if ca is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read("HEALTHCHECK_KEY"),
        certificate_chain=_read("HEALTHCHECK_CERT"),
    )
    return grpc.secure_channel(target, credentials)


def main() -> int:
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    port = os.environ.get("SEQSERVE_PORT", "8500")
    target = os.environ.get("HEALTHCHECK_TARGET") or f"127.0.0.1:{port}"
    try:
        with channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except (grpc.RpcError, OSError) as e:
        name = e.code().name if isinstance(e, grpc.RpcError) else str(e)
        print(f"unhealthy: {target}: {name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
