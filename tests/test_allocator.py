"""nets.cpu.allocator.keep_freed_memory: large tensors stop page-faulting once memory is kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

_CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    from sqvae_speech.nets.cpu.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()  # idempotent
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(12):  # a training step's pattern: a few large tensors made and freed
        before = faults()
        a, b = torch.ones(16 << 20), torch.ones(9 << 20)  # 64 and 36 MiB
        c = a + 1
        del a, b, c
        counts.append(faults() - before)
    print(sum(counts[6:]))
    """
)


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_keep_freed_memory_stops_page_faults_of_large_tensors() -> None:
    plain, kept = _faults("plain"), _faults("keep")
    # Each round maps 164 MiB (~42,000 pages of 4 KiB) afresh by default; kept, the heap
    # settles after a few rounds and the last six fault (almost) nothing.
    assert plain > 6 * 30_000, plain
    assert kept < plain // 8, (kept, plain)


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqvae_speech.nets.cpu import allocator

    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
