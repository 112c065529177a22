"""docs/bad-inputs.md names a test per row: every one must exist, so the matrix cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"
REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def test_every_test_named_in_the_bad_inputs_matrix_exists() -> None:
    refs = REF.findall(DOC.read_text(encoding="utf-8"))
    assert len(refs) >= 40, "the matrix names a test per row"
    missing = [
        f"{path}::{name}"
        for path, name in refs
        if not (ROOT / path).is_file()
        or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert not missing, f"docs/bad-inputs.md names tests that do not exist: {missing}"


def test_every_fuzzed_file_kind_is_in_the_matrix() -> None:
    from tests.cli.test_workspace_fuzz import KINDS

    text = DOC.read_text(encoding="utf-8")
    for kind in KINDS:
        generic = re.sub(r"^rounds/\d{4}/", "rounds/<r>/", kind)
        generic = re.sub(r"/(va|hungary)(\.|/)", r"/<site>\2", generic)
        generic = re.sub(
            r"\.(msg\.bin|to-\d+\.bin|masked\.bin|params\.safetensors)$", ".json", generic
        )
        generic = re.sub(r"/\d{4}\.json$", "/<r>.json", generic)
        assert f"`{generic}`" in text, generic
