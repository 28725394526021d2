"""Acceptance 8: `make demo` exits 0 (on this checkout, with its own embedded stack)."""

from __future__ import annotations

import os
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
    assert "identical to the source" in result.stdout
    assert result.stdout.count("verified") >= 6
