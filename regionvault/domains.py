"""The regulatory domains and where their data may live.

This is the one place that holds the domain table from the source policy. Configuration may pick
other regions, but only regions that lie inside the same domain (see ``allowed_*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from regionvault.errors import UnknownDomainError


class Domain(StrEnum):
    US = "us"
    EU = "eu"
    AU = "au"


@dataclass(frozen=True)
class DomainRegions:
    """Default regions of a domain and the region names that stay inside it."""

    aws_region: str
    gcp_location: str
    allowed_aws_regions: frozenset[str]
    allowed_gcp_locations: frozenset[str]
    #: Rackspace Cloud Files regions inside the domain (lower-case region codes)
    allowed_swift_regions: frozenset[str] = frozenset()
    #: regions outside the domain that a domain may still use only with ``uk_adequacy:
    #: true``: London is in the UK, not the EU, and EU data may go there only under the EU's
    #: adequacy decision for the UK, a legal choice a platform team makes explicitly, never
    #: a default
    adequacy_aws_regions: frozenset[str] = frozenset()
    adequacy_swift_regions: frozenset[str] = frozenset()


DOMAIN_TABLE: dict[Domain, DomainRegions] = {
    Domain.US: DomainRegions(
        aws_region="us-east-2",  # Ohio
        gcp_location="us-central1",  # Iowa
        allowed_aws_regions=frozenset({"us-east-1", "us-east-2", "us-west-1", "us-west-2"}),
        allowed_gcp_locations=frozenset(
            {"us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1",
             "us-west2", "us-west3", "us-west4"}
        ),
        allowed_swift_regions=frozenset({"dfw", "ord", "iad"}),  # Dallas, Chicago, N. Virginia
    ),
    Domain.EU: DomainRegions(
        aws_region="eu-central-1",  # Frankfurt
        gcp_location="europe-west4",  # Eemshaven, NL
        allowed_aws_regions=frozenset(
            {"eu-central-1", "eu-central-2", "eu-west-1", "eu-west-3", "eu-north-1",
             "eu-south-1", "eu-south-2"}
        ),
        allowed_gcp_locations=frozenset(
            {"europe-west1", "europe-west3", "europe-west4", "europe-west8", "europe-west9",
             "europe-west10", "europe-west12", "europe-north1", "europe-central2",
             "europe-southwest1"}
        ),
        # London (AWS eu-west-2, Cloud Files LON): the UK, under the EU's adequacy decision
        adequacy_aws_regions=frozenset({"eu-west-2"}),
        adequacy_swift_regions=frozenset({"lon"}),
    ),
    Domain.AU: DomainRegions(
        aws_region="ap-southeast-2",  # Sydney
        gcp_location="australia-southeast2",  # Melbourne
        allowed_aws_regions=frozenset({"ap-southeast-2", "ap-southeast-4"}),
        allowed_gcp_locations=frozenset({"australia-southeast1", "australia-southeast2"}),
        allowed_swift_regions=frozenset({"syd"}),  # Sydney
    ),
}


def parse_domain(value: str) -> Domain:
    """Turn user input into a Domain, or raise an error listing the valid ones."""
    try:
        return Domain(value.strip().lower())
    except ValueError:
        valid = ", ".join(d.value for d in Domain)
        raise UnknownDomainError(f"unknown domain {value!r} (domains: {valid})") from None


def queue_name(domain: Domain | str) -> str:
    """The Celery queue that carries every task of a domain, and nothing else."""
    return f"backup.{Domain(domain).value}"
