"""docs/RELIABILITY.md cannot drift from the tests: every row of its table names exactly one
test that exists, no test is named twice, and every test of tests/faults has its row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

DOC = REPO / "docs" / "RELIABILITY.md"
FAULTS = Path(__file__).resolve().parent
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _test_functions(path: Path) -> set[str]:
    """Names of the module-level ``test_*`` functions of a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def _table_rows(text: str) -> list[str]:
    """The body rows of every Markdown table (header and separator rows left out)."""
    rows, previous = [], ""
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line.strip()):
            if previous.startswith("|"):
                rows.append(line)
            previous = line
        else:
            previous = line if line.startswith("|") else ""
    return rows


def test_reliability_table_matches_the_tests():
    rows = _table_rows(DOC.read_text(encoding="utf-8"))
    assert len(rows) >= 40, f"{DOC} has only {len(rows)} table rows"
    named: list[tuple[str, str]] = []
    for row in rows:
        refs = TEST_REF.findall(row)
        assert len(refs) == 1, f"a row of {DOC.name} must name exactly one test, this one names {len(refs)}: {row}"
        named += refs
    duplicates = sorted({r for r in named if named.count(r) > 1})
    assert not duplicates, f"tests named by more than one row: {duplicates}"
    for file, name in named:
        assert (REPO / file).is_file(), f"{DOC.name} names {file}, which does not exist"
        assert name in _test_functions(REPO / file), f"{DOC.name} names {file}::{name}, which does not exist"
    in_table = set(named)
    for path in sorted(FAULTS.glob("test_*.py")):
        file = path.relative_to(REPO).as_posix()
        missing = sorted(n for n in _test_functions(path) if (file, n) not in in_table)
        assert not missing, f"tests of {file} without a row in {DOC.name}: {missing}"
