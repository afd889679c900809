"""The committed generated code is exactly what the .proto files generate today."""

from __future__ import annotations

from pathlib import Path

from scripts.gen_protos import PROTO_DIR, ROOT, generate

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generated_files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.name.endswith(GENERATED_SUFFIXES)
    }


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = generated_files(tmp_path / PROTO_DIR.relative_to(ROOT))
    committed = generated_files(PROTO_DIR)
    assert len(fresh) == 4 * len(list(PROTO_DIR.glob("*.proto")))
    assert sorted(committed) == sorted(fresh), "generated files added or removed"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `python scripts/gen_protos.py`: out of date: {stale}"
