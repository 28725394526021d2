"""Unit tests see no REGIONVAULT_* variables from the process (an integration stack may have
set them for the session), so configuration tests read only what they set themselves."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_regionvault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REGIONVAULT_"):
            monkeypatch.delenv(name)
