"""Reflection describes the v2 service by its wire names (`inference.*`), so that grpcurl and
other generic tools can call it; every other name resolves in the process's own pool.

Our messages are generated as `seqserve.inference` (see protos/seqserve/inference/vendor.py);
this pool serves the same files renamed back to Triton's package and file names.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

from seqserve.inference import grpc_service_pb2, model_config_pb2

OURS, WIRE = "seqserve.inference", "inference"


def _renamed(file: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)  # type: ignore[attr-defined]
    proto.name = proto.name.rsplit("/", 1)[-1]
    proto.package = WIRE
    proto.dependency[:] = [d.rsplit("/", 1)[-1] for d in proto.dependency]
    for message in _messages(proto):
        for field in message.field:
            if field.type_name.startswith(f".{OURS}."):
                field.type_name = f".{WIRE}." + field.type_name.removeprefix(f".{OURS}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{OURS}.", f".{WIRE}.")
            method.output_type = method.output_type.replace(f".{OURS}.", f".{WIRE}.")
    return proto


def _messages(proto: descriptor_pb2.FileDescriptorProto) -> list[descriptor_pb2.DescriptorProto]:
    found, stack = [], list(proto.message_type)
    while stack:
        message = stack.pop()
        found.append(message)
        stack.extend(message.nested_type)
    return found


class _WireNames:
    """A descriptor database: Triton's files by their wire names, then the default pool."""

    def __init__(self) -> None:
        files = [_renamed(model_config_pb2.DESCRIPTOR), _renamed(grpc_service_pb2.DESCRIPTOR)]
        self._files = {f.name: f for f in files}
        self._default = descriptor_pool.Default()

    def FindFileByName(self, name: str) -> descriptor_pb2.FileDescriptorProto:
        if name in self._files:
            return self._files[name]
        return self._copy(self._default.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:
        if symbol.startswith(f"{WIRE}."):
            for file in self._files.values():
                if _defines(file, symbol):
                    return file
            raise KeyError(symbol)
        return self._copy(self._default.FindFileContainingSymbol(symbol))

    @staticmethod
    def _copy(file: object) -> descriptor_pb2.FileDescriptorProto:
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)  # type: ignore[attr-defined]
        return proto


def _defines(file: descriptor_pb2.FileDescriptorProto, symbol: str) -> bool:
    """Whether `symbol` names one of the file's top-level types or services, or a member."""
    top = symbol.removeprefix(f"{file.package}.").split(".", 1)[0]
    names = [m.name for m in file.message_type] + [e.name for e in file.enum_type]
    return top in names + [s.name for s in file.service]


def reflection_pool() -> descriptor_pool.DescriptorPool:
    return descriptor_pool.DescriptorPool(_WireNames())
