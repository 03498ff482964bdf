"""Generate the Python modules of protos/ from the .proto sources.

protoc writes imports relative to the proto root (``from project_origin...``); the
modules live in the top-level ``protos`` package, so those imports are rewritten to
``from protos.project_origin...``. ``tests/test_protos.py`` regenerates into a
temporary folder and fails when the checked-in modules drift from the sources.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: protos/)
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_IMPORT = re.compile(r"^from project_origin\.", re.MULTILINE)


def proto_sources() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules for every .proto under protos/ into out_dir."""
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_sources()),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        written = []
        for path in sorted(Path(tmp).rglob("*")):
            if not path.name.endswith(GENERATED_SUFFIXES):
                continue
            text = _IMPORT.sub("from protos.project_origin.", path.read_text())
            target = out_dir / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written.append(target)
    for folder in {p.parent for p in written} | {p.parent.parent for p in written}:
        if folder.is_relative_to(out_dir) and folder != out_dir:
            (folder / "__init__.py").touch()
    return written


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(out_dir):
        print(path)


if __name__ == "__main__":
    main()
