"""Fast, pure unit tests of the regionvault core: no servers, no network.

``config_data`` builds the plain data of a valid configuration (what ``yaml.safe_load`` would
return), so each test changes only the part it is about.
"""

from __future__ import annotations

from typing import Any

#: (aws_region, gcp_location) of each domain, as in the domain table of the design
REGIONS: dict[str, tuple[str, str]] = {
    "us": ("us-east-2", "us-central1"),
    "eu": ("eu-central-1", "europe-west4"),
    "au": ("ap-southeast-2", "australia-southeast2"),
}


def source_data(name: str, data_class: str = "pii") -> dict[str, Any]:
    return {"name": name, "dsn": {"env": f"RV_TEST_DSN_{name.upper()}"}, "data_class": data_class}


def domain_data(domain: str, sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    aws_region, gcp_location = REGIONS[domain]
    return {
        "aws_region": aws_region,
        "s3_bucket": f"rv-{domain}-primary",
        "gcp_location": gcp_location,
        "gcs_bucket": f"rv-{domain}-replica",
        "key": {"id": f"{domain}-2026", "secret": {"env": f"RV_TEST_KEY_{domain.upper()}"}},
        "sources": sources if sources is not None else [
            source_data("accounts", "pii"), source_data("catalog", "metadata"),
        ],
    }


def config_data(*domains: str) -> dict[str, Any]:
    """A valid configuration holding ``domains`` (all three when none are named)."""
    return {"version": 1, "domains": {d: domain_data(d) for d in domains or REGIONS}}
