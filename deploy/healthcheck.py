"""Container health probe: the standard gRPC health service (grpc.health.v1.Health/Check).

Exit 0 when the server reports SERVING for SERVICE (default "": the whole server), else 1.
Used by the Dockerfile HEALTHCHECK; needs only grpcio + grpcio-health-checking (in the image).
Usage: python healthcheck.py [SERVICE]   (target: 127.0.0.1:$SEQSERVE_PORT, timeout 3 s)
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
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as e:
        print(f"unhealthy: {target}: {e.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
