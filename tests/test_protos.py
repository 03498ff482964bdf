"""The checked-in generated modules under protos/ match what the .proto sources generate."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def _gen_protos() -> ModuleType:
    # scripts/ is not a package: load the generator the way the script runs it.
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_files(root: Path, suffixes: tuple[str, ...]) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.name.endswith(suffixes)}


def test_generated_modules_match_the_proto_sources(tmp_path: Path) -> None:
    gen = _gen_protos()
    written = gen.generate(tmp_path)
    assert written, "the generator wrote nothing"

    suffixes: tuple[str, ...] = gen.GENERATED_SUFFIXES
    fresh = _generated_files(tmp_path, suffixes)
    checked_in = _generated_files(PROTOS, suffixes)
    assert fresh == checked_in, (
        f"missing from protos/: {sorted(map(str, fresh - checked_in))}; "
        f"stale in protos/: {sorted(map(str, checked_in - fresh))} — run scripts/gen_protos.py"
    )
    drifted = [
        str(rel) for rel in sorted(fresh) if (tmp_path / rel).read_text() != (PROTOS / rel).read_text()
    ]
    assert not drifted, (
        f"generated modules differ from the .proto sources: {drifted} — run scripts/gen_protos.py"
    )


def test_every_generated_package_folder_is_importable() -> None:
    gen = _gen_protos()
    for rel in _generated_files(PROTOS, gen.GENERATED_SUFFIXES):
        folder = (PROTOS / rel).parent
        while folder != PROTOS.parent:
            assert (folder / "__init__.py").is_file(), f"{folder} lacks __init__.py"
            folder = folder.parent


def test_every_proto_source_has_its_generated_modules() -> None:
    gen = _gen_protos()
    for source in gen.proto_sources():
        stem = source.with_suffix("")
        for suffix in gen.GENERATED_SUFFIXES:
            assert Path(f"{stem}{suffix}").is_file(), f"{source.name}: {stem.name}{suffix} not generated"
