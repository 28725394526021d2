"""The bucket backstops on the dev stack: the buckets it creates hold exactly what
``regionvault provision`` writes, and ``regionvault check`` exits 3 naming a rule deleted by hand.
(Versioned buckets, weaker rules and the GCS request schema: tests/stores/test_provision.py.)"""

from __future__ import annotations

import pytest

from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.provision import RULE_ABORT_UPLOADS, RULE_PII

from .helpers import config_of, regionvault_cli, s3_client

pytestmark = pytest.mark.stack


def test_provision_then_check_on_the_dev_stack(stack: DevStack) -> None:
    provisioned = regionvault_cli(stack, "provision")
    assert provisioned.returncode == 0, provisioned.stderr
    # The stack made its buckets with the same code: nothing left to write.
    assert provisioned.stdout.count("already in place, nothing written") == 6

    checked = regionvault_cli(stack, "check", "--domain", "eu")
    assert checked.returncode == 0, checked.stderr
    assert "lifecycle rules of both buckets as the policy requires" in checked.stdout


def test_a_rule_deleted_by_hand_fails_check_naming_it(stack: DevStack) -> None:
    dcfg = config_of(stack).domain(Domain.EU)
    s3 = s3_client(stack, dcfg.aws_region)
    s3.delete_bucket_lifecycle(Bucket=dcfg.s3_bucket)
    try:
        result = regionvault_cli(stack, "check", "--domain", "eu")
        assert result.returncode == 3
        assert (f"s3://{dcfg.s3_bucket}: lifecycle rule '{RULE_PII}' is missing"
                in result.stderr)
        assert f"lifecycle rule '{RULE_ABORT_UPLOADS}' is missing" in result.stderr
    finally:
        repaired = regionvault_cli(stack, "provision", "--domain", "eu")
    assert repaired.returncode == 0, repaired.stderr
    assert regionvault_cli(stack, "check", "--domain", "eu").returncode == 0
