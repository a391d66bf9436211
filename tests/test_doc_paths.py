"""README.md and the runbooks name no path of the machine they were written on: a newcomer's checkout
is elsewhere, so paths are relative to it (runs/<run>/..., examples/...)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "runbooks").glob("*.md"))]
# A home or work directory, or this very checkout, wherever it is.
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:home|work|root|Users|srv)/[\w.-]+|" + re.escape(str(ROOT)))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_paths(doc):
    hits = [f"{doc.name}:{n}: {line.strip()}" for n, line in enumerate(doc.read_text().splitlines(), 1)
            if MACHINE_PATH.search(line)]
    assert hits == []


def test_the_check_sees_a_checkout_path():
    assert MACHINE_PATH.search("run directory /work/main/runs/20261125-155408")
    assert MACHINE_PATH.search(f"database sqlite:///{ROOT}/runs/x/migrator.db")
    assert not MACHINE_PATH.search("migrator history -c runs/20261125-155408/canary.toml")
