"""Container health probe: the standard gRPC health service (grpc.health.v1.Health/Check).

Exit 0 when the server reports SERVING for SERVICE (default "": the whole server), else 1.
Used by the Dockerfile HEALTHCHECK; needs only grpcio + grpcio-health-checking (in the image).
Usage: python healthcheck.py [SERVICE]   (target: 127.0.0.1:$SEQSERVE_PORT, timeout 3 s)

Against a TLS port (Kubernetes' native gRPC probe speaks plaintext only), set HEALTHCHECK_TLS_CA
to the CA file that signed the server's certificate, HEALTHCHECK_TLS_SERVER_NAME to a name in it,
and, for mutual TLS, HEALTHCHECK_TLS_CERT and HEALTHCHECK_TLS_KEY to a client certificate.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    port = os.environ.get("SEQSERVE_PORT", "8500")
    target = os.environ.get("HEALTHCHECK_TARGET") or f"127.0.0.1:{port}"
    try:
        with _channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except (grpc.RpcError, OSError) as e:
        name = e.code().name if isinstance(e, grpc.RpcError) else str(e)
        print(f"unhealthy: {target}: {name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _channel(target: str) -> grpc.Channel:
    ca = os.environ.get("HEALTHCHECK_TLS_CA")
    if not ca:
        return grpc.insecure_channel(target)
    cert, key = os.environ.get("HEALTHCHECK_TLS_CERT"), os.environ.get("HEALTHCHECK_TLS_KEY")
    credentials = grpc.ssl_channel_credentials(
        _read(ca), _read(key) if key else None, _read(cert) if cert else None
    )
    name = os.environ.get("HEALTHCHECK_TLS_SERVER_NAME")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


if __name__ == "__main__":
    sys.exit(main())
