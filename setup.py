"""Build hook: generate the gRPC stubs from ``protos/`` at build/install time.

The stubs are generated with ``protos/`` as the proto root, so
``protos/recxfer/v1/recommender.proto`` becomes ``recxfer/v1/recommender_pb2.py``
whose imports are package-qualified (``from recxfer.v1 import ...``). They are
written into the source tree (so editable installs see them) and are git-ignored.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "protos"


def generate_stubs() -> None:
    """Run protoc (from grpcio-tools) over every ``.proto`` under ``protos/``."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")


class BuildPyWithStubs(build_py):
    """``build_py`` that generates the gRPC stubs first."""

    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
