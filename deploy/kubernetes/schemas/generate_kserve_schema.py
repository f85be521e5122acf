"""Write kserve.json: JSON schemas of KServe's ServingRuntime and InferenceService, from KServe's
own types (the generated OpenAPI models of its Python SDK wheel), for tests/deploy.

    pip download --no-deps kserve==0.21.0
    python deploy/kubernetes/schemas/generate_kserve_schema.py kserve-0.21.0-py3-none-any.whl

Why not KServe's CRDs: the InferenceService CRD is about 1 MB (it inlines every pod field), and
its "minimal" variant validates nothing (x-kubernetes-preserve-unknown-fields). The SDK's models
are generated from the same Go types; each lists its fields (`openapi_types`, `attribute_map`) and
which are required. KServe's fields become strict objects (no unknown keys); Kubernetes' own types
(V1Container, ...) become references into kubernetes-validate's definitions, resolved at test time
for each Kubernetes version checked.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

ROOTS = {"ServingRuntime": "V1alpha1ServingRuntime", "InferenceService": "V1beta1InferenceService"}
K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"
# Kubernetes' types by SDK name -> definition (core/v1 unless listed).
K8S_GROUPS = {
    "V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "V1LabelSelector": "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "V1Condition": "io.k8s.apimachinery.pkg.apis.meta.v1.Condition",
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}
SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
           "float": {"type": "number"}, "datetime": {"type": "string"}, "object": {}}  # fmt: skip
UNCHECKED: set[str] = set()
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def models(wheel: Path) -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    """Every SDK model class: (field -> type, field -> JSON key, required fields)."""
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not re.fullmatch(r"kserve/models/v1\w+\.py", name):
                continue
            source = archive.read(name).decode()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef):
                    found[node.name] = (*_fields(node), set(REQUIRED.findall(source)))
    return found


def _fields(node: ast.ClassDef) -> tuple[dict[str, str], dict[str, str]]:
    values = {}
    for statement in node.body:
        target = statement.targets[0] if isinstance(statement, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
            values[target.id] = ast.literal_eval(statement.value)  # type: ignore[attr-defined]
    return values["openapi_types"], values["attribute_map"]


def schema_of(kind: str, known: dict, definitions: dict) -> dict:
    if kind in SCALARS:
        return dict(SCALARS[kind])
    if match := re.fullmatch(r"list\[(.+)\]", kind):
        return {"type": "array", "items": schema_of(match[1], known, definitions)}
    if match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        return {"type": "object", "additionalProperties": schema_of(match[1], known, definitions)}
    if kind in known:
        if kind not in definitions:
            definitions[kind] = {}  # placeholder: recursion
            types, keys, required = known[kind]
            definitions[kind] = {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    keys[f]: schema_of(t, known, definitions) for f, t in sorted(types.items())
                },
                "required": sorted(keys[f] for f in required if f in keys),
            }
        return {"$ref": f"#/$defs/{kind}"}
    if kind in K8S_GROUPS:
        return {"$ref": K8S_DEFS + K8S_GROUPS[kind]}
    if match := re.fullmatch(r"K8sIoApi([A-Z][a-z0-9]*)(V\d+(?:(?:alpha|beta)\d+)?)(\w+)", kind):
        group, version, name = match.groups()
        return {"$ref": K8S_DEFS + f"io.k8s.api.{group.lower()}.{version.lower()}.{name}"}
    if match := re.fullmatch(r"V1(?!alpha|beta)(\w+)", kind):
        return {"$ref": K8S_DEFS + f"io.k8s.api.core.v1.{match[1]}"}
    # Knative's status types (`status` only, which no manifest writes) and the few types the SDK
    # names without shipping them: accepted as they are.
    UNCHECKED.add(kind)
    return {}


def main(wheel: Path) -> None:
    known = models(wheel)
    definitions: dict = {}
    roots = {kind: schema_of(name, known, definitions) for kind, name in ROOTS.items()}
    out = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": f"KServe types from {wheel.name} by generate_kserve_schema.py; "
        f"not checked: {', '.join(sorted(UNCHECKED))}",
        "kinds": roots,
        "$defs": dict(sorted(definitions.items())),
    }
    target = Path(__file__).with_name("kserve.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{target}: {len(definitions)} KServe types, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
