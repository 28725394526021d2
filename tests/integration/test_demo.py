"""Acceptance 8: `make demo` exits 0 (on this checkout, with its own embedded stack)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.stack


def test_make_demo_exits_zero() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGIONVAULT_")}
    result = subprocess.run(["make", "-C", str(ROOT), "demo"], capture_output=True, text=True,
                            env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo passed" in result.stdout
    # one source of each kind restored and compared table by table; the Journeys ones from
    # Cloud Files, where their primary copy lives
    assert re.search(r"restored postgres backup \S+ from s3 .* identical to the source",
                     result.stdout)
    for kind in ("mysql", "bigtable"):
        assert re.search(rf"restored {kind} backup au\.journeys-\S+ from swift .* identical "
                         "to the source", result.stdout), kind
    assert "swift://rv-dev-au-journeys/" in result.stdout.replace("\n", "")
    assert result.stdout.count("verified") >= 8
