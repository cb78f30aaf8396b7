"""Generate the `bridge.*` Python package from protos/ (what `make protos` runs).

The output is one package imported package-qualified everywhere
(`from bridge.conversation.v1 import conversation_pb2`), with .pyi stubs for mypy.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "bridge"


def _plugin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        sys.exit(f"{name} not found next to {sys.executable}: install mypy-protobuf")
    return str(path)


def generate() -> None:
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            # mypy-protobuf types both the messages and the gRPC stubs/servicers.
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_out={ROOT}",
            f"--mypy_grpc_out={ROOT}",
            *protos,
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed with status {status}")
    for directory in [OUT_DIR, *(p for p in OUT_DIR.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


if __name__ == "__main__":
    generate()
