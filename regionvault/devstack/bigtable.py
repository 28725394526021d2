"""A Bigtable emulator (``cbtemulator``) for the developer stack and the tests.

``cbtemulator`` is the in-memory Bigtable server that ships with the Google Cloud CLI (Debian
package ``google-cloud-cli-bigtable-emulator``). It accepts any project and instance without
creating them, speaks the real Bigtable data and table-admin gRPC APIs over plaintext, and
loses everything when it stops. Like the other servers it binds 127.0.0.1 on a free port and
runs in its own process group (``services.start_process``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from regionvault.childenv import child_environment
from regionvault.devstack.services import (
    DEFAULT_START_TIMEOUT,
    HOST,
    ManagedProcess,
    ServiceStartError,
    free_port,
    start_process,
    wait_until,
)

#: where Debian's google-cloud-cli-bigtable-emulator package installs it
DEBIAN_CBTEMULATOR = Path("/usr/lib/google-cloud-sdk/platform/bigtable-emulator/cbtemulator")
_IN_SDK = Path("platform/bigtable-emulator/cbtemulator")


@dataclass(frozen=True)
class BigtableService:
    """A Bigtable emulator on ``host:port``; any project and instance exist there."""

    host: str
    port: int
    process: ManagedProcess

    @property
    def emulator_host(self) -> str:
        """"HOST:PORT", as ``BIGTABLE_EMULATOR_HOST`` and the DSN's ``emulator`` spell it."""
        return f"{self.host}:{self.port}"

    def dsn(self, project: str, instance: str) -> str:
        return f"bigtable://{project}/{instance}?emulator={self.emulator_host}"

    def stop(self, timeout: float = 10) -> None:
        self.process.stop(timeout)


def cbtemulator_binary() -> Path:
    """``cbtemulator`` from PATH, Debian's path, or the Cloud SDK that ``gcloud`` names."""
    found = shutil.which("cbtemulator")
    if found:
        return Path(found)
    if DEBIAN_CBTEMULATOR.is_file():
        return DEBIAN_CBTEMULATOR
    sdk_root = _gcloud_sdk_root()
    if sdk_root is not None and (sdk_root / _IN_SDK).is_file():
        return sdk_root / _IN_SDK
    raise ServiceStartError(
        "The Bigtable emulator (cbtemulator) is not installed: install the Debian package "
        "google-cloud-cli-bigtable-emulator (or `gcloud components install bigtable`).",
        service="bigtable",
    )


def _gcloud_sdk_root() -> Path | None:
    """The Cloud SDK root of a ``gcloud`` on PATH (one short call), or None."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    try:
        result = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True, text=True, timeout=20, check=False,
            env=child_environment(os.environ),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    root = result.stdout.strip()
    return Path(root) if result.returncode == 0 and root else None


def start_bigtable(workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT) -> BigtableService:
    """Start ``cbtemulator`` on a free port of 127.0.0.1; its log is ``workdir/bigtable.log``.

    Returns once the emulator answers a real ListTables call.
    """
    binary = cbtemulator_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start_process(
        "bigtable",
        [binary, "-host", HOST, "-port", str(port)],
        log_path=workdir / "bigtable.log",
        cwd=workdir,
    )
    service = BigtableService(host=HOST, port=port, process=process)
    try:
        wait_until(lambda: _answers(service.emulator_host), timeout=timeout,
                   what=f"ListTables on {service.emulator_host} answers", process=process)
    except BaseException:
        process.stop()
        raise
    return service


def _answers(emulator_host: str) -> bool:
    # imported here: the rest of the devstack must not need the Bigtable client to start
    import grpc
    from google.cloud.bigtable_admin_v2 import BaseBigtableTableAdminClient
    from google.cloud.bigtable_admin_v2.services.bigtable_table_admin.transports import (
        BigtableTableAdminGrpcTransport,
    )

    channel = grpc.insecure_channel(emulator_host)
    try:
        admin = BaseBigtableTableAdminClient(
            transport=BigtableTableAdminGrpcTransport(channel=channel))
        # the emulator lists the tables of any instance, even one nobody created
        list(admin.list_tables(parent="projects/regionvault/instances/ready", timeout=2,
                               retry=None))
        return True
    finally:
        channel.close()
