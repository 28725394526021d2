"""Sample sources for the embedded stack: a small seeded database per domain and source,
the configuration that points at them, and a fingerprint to compare databases row by row."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from regionvault.domains import DOMAIN_TABLE, Domain

#: domains of the sample configuration whose data keys AWS KMS wraps (with the local escrow);
#: the others use local keys only, as small installs do
KMS_DOMAINS: tuple[Domain, ...] = (Domain.EU,)


@dataclass(frozen=True)
class SampleSource:
    #: the source's name; ``{domain}`` in it is replaced by each domain's (a name of its own
    #: in every domain, for tests that look for one domain's names where they must not be)
    name: str
    data_class: str
    seed_sql: str
    #: (sql, expected value) run by restore drills on the restored copy
    check: tuple[str, str] | None = None

    def name_in(self, domain: Domain) -> str:
        return self.name.replace("{domain}", domain.value)


SAMPLE_SOURCES: tuple[SampleSource, ...] = (
    SampleSource(
        name="accounts",
        data_class="pii",
        seed_sql="""
            CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL, name text,
                                    created timestamptz NOT NULL DEFAULT now());
            INSERT INTO customers (email, name)
                SELECT 'user' || i || '@example.{domain}', 'Customer ' || i
                FROM generate_series(1, 500) AS i;
        """,
        check=("SELECT count(*) FROM customers WHERE email NOT LIKE '%@%'", "0"),
    ),
    SampleSource(
        name="catalog",
        data_class="metadata",
        seed_sql="""
            CREATE TABLE plans (id serial PRIMARY KEY, code text UNIQUE NOT NULL,
                                seats int NOT NULL);
            INSERT INTO plans (code, seats)
                SELECT 'plan-{domain}-' || i, i * 5 FROM generate_series(1, 50) AS i;
        """,
        check=("SELECT count(*) FROM plans WHERE seats <= 0", "0"),
    ),
)


def database_name(domain: Domain, source: str) -> str:
    return f"{domain.value}_{source.replace('-', '_')}"


def keyring_files(keys_dir: Path) -> dict[Domain, Path]:
    """Where each domain's keyring file lives (written by ``regionvault keys init``)."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {domain: keys_dir / f"{domain.value}.keyring.json" for domain in Domain}


def _source_entry(src: SampleSource, name: str, dsn_file: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "kind": "postgres", "data_class": src.data_class,
                             "dsn": {"file": str(dsn_file)}}
    if src.check is not None:
        entry["check"] = {"sql": src.check[0], "expect": src.check[1]}
    return entry


def sample_config(*, data_dir: Path, sources: tuple[SampleSource, ...],
                  dsn_files: dict[tuple[Domain, str], Path],
                  keyring_files: dict[Domain, Path], scratch_dsn_file: Path,
                  restore_target_files: dict[Domain, Path]) -> dict[str, Any]:
    """A development configuration: three domains, the sample sources, local endpoints.

    Endpoints and the broker URL are not written here: they come from the environment
    (``dev.env``), so the file stays valid across restarts of the stack on new ports.
    """
    domains: dict[str, Any] = {}
    for domain in Domain:
        regions = DOMAIN_TABLE[domain]
        domains[domain.value] = {
            "aws_region": regions.aws_region,
            "s3_bucket": f"rv-dev-{domain.value}-primary",
            "gcp_location": regions.gcp_location,
            "gcs_bucket": f"rv-dev-{domain.value}-replica",
            "keyring": {"file": str(keyring_files[domain]),
                        "wrappers": ["aws-kms", "local"] if domain in KMS_DOMAINS
                        else ["local"]},
            "schedule": "0 2 * * *",
            "sources": [_source_entry(src, src.name_in(domain),
                                      dsn_files[(domain, src.name_in(domain))])
                        for src in sources],
            "drill": {"schedule": "0 4 * * 0", "scratch_dsn": {"file": str(scratch_dsn_file)}},
            "restore_targets": {"scratch": {"file": str(restore_target_files[domain])}},
        }
    return {
        "version": 1,
        "development": True,
        "spool_dir": str(data_dir / "spool"),
        "s3": {"part_size_mib": 5},
        "gcs": {"project": "regionvault-dev", "chunk_size_mib": 1},
        "retention": {"pii_days": 29, "metadata_days": 365},
        # quick retries: on a laptop an outage is usually a stopped emulator
        "retries": {"window_seconds": 10, "backoff_seconds": 1, "backoff_max_seconds": 4},
        # a laptop's stack heals fast: dead owners are seen in seconds, not minutes
        "reconcile": {"lease_seconds": 10, "interval_seconds": 10,
                      "handoff_grace_seconds": 30, "orphan_after_seconds": 600},
        "domains": domains,
    }


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def seed(dsn: str, domain: Domain, source: SampleSource) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(source.seed_sql.replace("{domain}", domain.value).encode())


def fingerprint(dsn: str) -> dict[str, tuple[int, str]]:
    """Per user table: (row count, SHA-256 of its rows in primary-key order)."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        for table in tables:
            digest = hashlib.sha256()
            count = 0
            query = sql.SQL("SELECT t::text FROM {} AS t ORDER BY 1").format(sql.Identifier(table))
            for (row,) in conn.execute(query):
                digest.update(row.encode() + b"\n")
                count += 1
            out[table] = (count, digest.hexdigest())
    return out
