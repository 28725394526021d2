"""Acceptance 6: bad input gets a one-sentence error, a non-zero exit, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from regionvault.devstack.stack import DevStack
from tests.integration.helpers import object_names, regionvault_cli

pytestmark = pytest.mark.stack


def _config_with(stack: DevStack, tmp_path: Path, change: object) -> Path:
    data = yaml.safe_load(Path(stack.env["REGIONVAULT_CONFIG"]).read_text())
    assert callable(change)
    change(data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]


def _rename_first_source(name: str) -> object:
    def change(data: dict) -> None:  # type: ignore[type-arg]
        data["domains"]["eu"]["sources"][0]["name"] = name
    return change


def _dsn_from_missing_env(data: dict) -> None:  # type: ignore[type-arg]
    data["domains"]["eu"]["sources"][0]["dsn"] = {"env": "RV_TEST_NO_SUCH_DSN"}


CASES = {
    "unknown-domain": (["backup", "--domain", "xx", "--source", "accounts"], None,
                       "unknown domain 'xx' (domains: us, eu, au)"),
    "unknown-source": (["backup", "--domain", "eu", "--source", "billing"], None,
                       "source 'billing' is not configured in domain 'eu' (configured: "),
    "source-with-dotdot": (["backup", "--domain", "eu", "--source", "../accounts"], None,
                           "source '../accounts' is not configured in domain 'eu'"),
    "source-with-slash-in-config": (["list"], _rename_first_source("acc/ounts"),
                                    "domains.eu.sources.0.name"),
    "source-with-dotdot-in-config": (["list"], _rename_first_source(".."),
                                     "no '/' or '.'"),
    # --local: the changed configuration is this process's only (the workers keep theirs)
    "missing-dsn-variable": (["check", "--domain", "eu", "--local"], _dsn_from_missing_env,
                             "environment variable RV_TEST_NO_SUCH_DSN is missing"),
    "bad-backup-id": (["show", "eu/../../etc"], None, "is not a backup id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_clearly_and_changes_nothing(
        stack: DevStack, tmp_path: Path, case: str) -> None:
    args, change, message = CASES[case]
    before = object_names(stack)
    if change is not None:
        args = [*args, "--config", str(_config_with(stack, tmp_path, change))]
    result = regionvault_cli(stack, *args)
    assert result.returncode != 0
    line = _one_sentence(result.stderr)
    assert message in line
    assert object_names(stack) == before


def test_malformed_yaml_is_refused(stack: DevStack, tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("domains:\n  eu: [unclosed\n")
    before = object_names(stack)
    result = regionvault_cli(stack, "backup", "--domain", "eu", "--source", "accounts",
                             "--config", str(bad))
    assert result.returncode == 2
    line = _one_sentence(result.stderr)
    assert "is not valid YAML at line" in line
    assert object_names(stack) == before


def test_check_passes_on_a_good_configuration(stack: DevStack) -> None:
    result = regionvault_cli(stack, "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("2 buckets (s3, gcs) ok") == 3
