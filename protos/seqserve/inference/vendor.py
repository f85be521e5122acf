"""Write Triton's protocol (`grpc_service.proto`, `model_config.proto`) as .proto files from the
descriptors inside the installed `tritonclient` wheel, under the proto package `seqserve.inference`.

Why from the wheel: it is exactly what the stock client (2.73) speaks. Why another package:
tritonclient registers `inference.*` in protobuf's default descriptor pool, which refuses a
second definition of a symbol, so ours must live elsewhere to import in the same process. The
package name never travels on the wire (message bytes carry field numbers only); the server
registers the service under its wire name `inference.GRPCInferenceService`.

Run `python protos/seqserve/inference/vendor.py` after upgrading tritonclient, then `make proto`.
"""

from __future__ import annotations

import sys
from importlib.metadata import distribution, version
from pathlib import Path

from google.protobuf import descriptor_pb2 as d

HERE = Path(__file__).resolve().parent
PACKAGE = "seqserve.inference"
SOURCE_PACKAGE = "inference"
IMPORTS = {"model_config.proto": "seqserve/inference/model_config.proto"}
HEADER = """\
// Triton Inference Server's protocol (triton-inference-server/common, protobuf/{name})
// as shipped in tritonclient {version}, re-packaged as `{package}` so that it imports
// beside tritonclient's own copy; written by vendor.py beside this file, from the wheel's
// descriptors (which carry no comments). tritonclient's license follows.
//
"""

F = d.FieldDescriptorProto
_SCALARS = {
    F.TYPE_DOUBLE: "double", F.TYPE_FLOAT: "float", F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64", F.TYPE_INT32: "int32", F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32", F.TYPE_BOOL: "bool", F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes", F.TYPE_UINT32: "uint32", F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64", F.TYPE_SINT32: "sint32", F.TYPE_SINT64: "sint64",
}  # fmt: skip


def _type(field: d.FieldDescriptorProto) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    prefix = f".{SOURCE_PACKAGE}."
    return (
        field.type_name.removeprefix(prefix)
        if field.type_name.startswith(prefix)
        else (field.type_name.lstrip("."))
    )


def _field(field: d.FieldDescriptorProto, maps: dict[str, d.DescriptorProto]) -> str:
    entry = maps.get(field.type_name)
    if entry is not None:
        key, value = entry.field
        kind = f"map<{_type(key)}, {_type(value)}>"
    else:
        repeated = "repeated " if field.label == F.LABEL_REPEATED else ""
        optional = "optional " if field.proto3_optional else ""
        kind = f"{repeated}{optional}{_type(field)}"
    options = (
        " [packed = false]" if field.options.HasField("packed") and not field.options.packed else ""
    )
    return f"{kind} {field.name} = {field.number}{options};"


def _enum(enum: d.EnumDescriptorProto, indent: str) -> list[str]:
    lines = [f"{indent}enum {enum.name} {{"]
    if enum.options.allow_alias:
        lines.append(f"{indent}  option allow_alias = true;")
    lines += [f"{indent}  {v.name} = {v.number};" for v in enum.value]
    return [*lines, f"{indent}}}"]


def _message(message: d.DescriptorProto, scope: str, indent: str) -> list[str]:
    full = f"{scope}.{message.name}"
    maps = {f"{full}.{n.name}": n for n in message.nested_type if n.options.map_entry}
    lines = [f"{indent}message {message.name} {{"]
    inner = indent + "  "
    for enum in message.enum_type:
        lines += _enum(enum, inner)
    for nested in message.nested_type:
        if not nested.options.map_entry:
            lines += _message(nested, full, inner)
    real_oneofs = {
        f.oneof_index for f in message.field if f.HasField("oneof_index") and not f.proto3_optional
    }
    done: set[int] = set()
    for field in message.field:
        index = field.oneof_index if field.HasField("oneof_index") else None
        if index is None or index not in real_oneofs:
            lines.append(f"{inner}{_field(field, maps)}")
        elif index not in done:
            done.add(index)
            lines.append(f"{inner}oneof {message.oneof_decl[index].name} {{")
            members = [
                f for f in message.field if f.HasField("oneof_index") and f.oneof_index == index
            ]
            lines += [f"{inner}  {_field(f, maps)}" for f in members]
            lines.append(f"{inner}}}")
    for reserved in message.reserved_range:
        lines.append(f"{inner}reserved {reserved.start} to {reserved.end - 1};")
    if message.reserved_name:
        lines.append(f"{inner}reserved {', '.join(repr(n) for n in message.reserved_name)};")
    return [*lines, f"{indent}}}"]


def _service(service: d.ServiceDescriptorProto) -> list[str]:
    lines = [f"service {service.name} {{"]
    for method in service.method:
        request = ("stream " if method.client_streaming else "") + _type_name(method.input_type)
        response = ("stream " if method.server_streaming else "") + _type_name(method.output_type)
        lines.append(f"  rpc {method.name}({request}) returns ({response}) {{}}")
    return [*lines, "}"]


def _type_name(name: str) -> str:
    return name.removeprefix(f".{SOURCE_PACKAGE}.")


def to_proto(file: d.FileDescriptorProto, release: str) -> str:
    """The file as .proto source in PACKAGE (no comments: the wheel's descriptors have none)."""
    header = HEADER.format(name=file.name, version=release, package=PACKAGE)
    lines = [header + _license(), ""]
    lines += [f'syntax = "{file.syntax or "proto2"}";', "", f"package {PACKAGE};", ""]
    if file.dependency:
        lines += [f'import "{IMPORTS.get(dep, dep)}";' for dep in file.dependency] + [""]
    for enum in file.enum_type:
        lines += [*_enum(enum, ""), ""]
    for message in file.message_type:
        lines += [*_message(message, f".{SOURCE_PACKAGE}", ""), ""]
    for service in file.service:
        lines += [*_service(service), ""]
    return "\n".join(lines)


def _license() -> str:
    """tritonclient's own license text, as comment lines."""
    files = distribution("tritonclient").files or []
    path = next(f for f in files if f.name.startswith("LICENSE"))
    text = path.read_text().strip()
    lines = (line.removeprefix("#").removeprefix(" ") for line in text.splitlines())
    return "\n".join(f"// {line}".rstrip() for line in lines)


def main() -> int:
    from tritonclient.grpc import model_config_pb2, service_pb2

    for module in (model_config_pb2, service_pb2):
        file = d.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        (HERE / file.name).write_text(to_proto(file, version("tritonclient")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
