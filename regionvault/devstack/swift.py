"""A real OpenStack Swift cluster on one machine, standing in for Rackspace Cloud Files.

``start_swift`` runs Debian's Swift servers (packages swift, swift-proxy, swift-account,
swift-container, swift-object) with a memcached for tempauth's tokens, every one bound to
127.0.0.1 on a free port, with everything they write under ``workdir``:

- ``etc/``: ``swift.conf`` (with a hash prefix and suffix of its own, kept when the cluster is
  started again on the same ``workdir``, so its objects are found again), the three rings built at
  start by ``swift-ring-builder`` (one device, one replica, 2**6 partitions) and one config file
  per server. The servers read ``swift.conf`` from ``/etc/swift`` whatever their config says, so
  they are started through ``etc/run_server.py``, which points Swift at ``etc/`` first.
- ``devices/d1``: the one device, a plain directory (``mount_check = false``). The object server
  keeps an object's metadata in extended attributes, so the filesystem must support them.
- ``logs/``: one log per server (Swift logs to the console, not to syslog, here).

The servers run with Debian's ``/usr/bin/python3``, not this project's virtualenv: that is where
the packages install Swift. The proxy's pipeline has ``slo`` (the large objects ``SwiftStore``
writes), ``versioned_writes`` and ``symlink`` (container versioning), ``copy``, ``dlo``,
``bulk``, ``tempauth`` and ``proxy-logging``; tempauth gives one user the ``.reseller_admin``
role, so its token opens every account of the cluster.

The identity service: Rackspace Cloud Files authenticates against Rackspace Identity (Keystone
v2.0: ``POST /v2.0/tokens``), whose service catalog lists the ``object-store`` endpoints of each
region, and ``SwiftStore`` learns a container's region from that catalog. A small identity
service of our own (``IdentityShim``, an HTTP server in a thread of this process) stands in for
Rackspace Identity: it checks the user's key against tempauth (``GET /auth/v1.0`` on the proxy)
and answers with a Keystone v2 access document whose catalog gives each region of ``regions``
(region code -> Swift account) an endpoint of its own: the proxy's URL with that account. So the
dev stack decides residency the way production does, by the catalog.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from regionvault.devstack.services import (
    HOST,
    DevstackError,
    ManagedProcess,
    ServiceStartError,
    free_port,
    start_process,
    wait_until,
)

#: what the dev stack gives ``start_swift`` when it names no regions: Rackspace's Sydney,
#: Dallas and London regions, one Swift account each
DEFAULT_REGIONS: Mapping[str, str] = {"SYD": "AUTH_au", "DFW": "AUTH_us", "LON": "AUTH_uk"}

#: the Debian packages the servers come from, as ``make test`` installs them
DEBIAN_PACKAGES = ("swift", "swift-proxy", "swift-account", "swift-container", "swift-object",
                   "memcached")
APT_GET_INSTALL = ("DEBIAN_FRONTEND=noninteractive apt-get install -y "
                   + " ".join(DEBIAN_PACKAGES))

#: Debian's interpreter, which the swift packages install into (not our virtualenv's)
SYSTEM_PYTHON = Path("/usr/bin/python3")
_BIN = Path("/usr/bin")
_SERVERS = ("object", "container", "account")

#: the identity user, and the tempauth account it authenticates as (its own storage is unused:
#: the catalog points at the accounts of ``regions``)
IDENTITY_USER = "regionvault"
_TEMPAUTH_ACCOUNT = "rv"
_RING_PART_POWER = 6

# Swift's servers import the ``__main__`` module's ``console_only`` as a log handler hook
# (``log_custom_handlers``): Swift always adds a syslog handler, which with no /dev/log sends
# UDP datagrams to port 514; the console (our log file) is where its log belongs here.
_RUN_SERVER = '''\
"""Run one Swift server with swift.conf read from the directory given (written by regionvault's
dev stack; Swift itself would read /etc/swift/swift.conf)."""
import sys

from swift.common import storage_policy, utils
from swift.common.wsgi import run_wsgi


def console_only(conf, name, log_to_console, log_route, fmt, logger, adapted_logger):
    handler = utils.get_logger.handler4logger.pop(logger, None)
    if handler is not None:
        logger.removeHandler(handler)
        handler.close()


swift_dir, conf_path, section = sys.argv[1:4]
utils.set_swift_dir(swift_dir)
storage_policy.reload_storage_policies()
sys.exit(run_wsgi(conf_path, section, verbose=True))
'''


@dataclass(frozen=True)
class SwiftService:
    """A running Swift cluster (proxy, account, container and object servers, memcached) and the
    identity service in front of it."""

    #: the proxy, e.g. ``http://127.0.0.1:41234`` (storage URLs are ``<proxy_url>/v1/<account>``)
    proxy_url: str
    #: the Keystone v2.0 identity endpoint a ``SwiftStore`` is given as ``auth_url``
    identity_url: str
    user: str
    key: str = field(repr=False)
    #: region code (``"SYD"``) -> Swift account (``"AUTH_au"``), as the catalog lists them
    regions: Mapping[str, str]
    #: the object server's devices directory (where a test finds an object's ``.data`` file)
    devices: Path
    processes: tuple[ManagedProcess, ...] = field(repr=False)
    identity: IdentityShim = field(repr=False)

    def storage_url(self, region: str) -> str:
        """The storage URL of ``region``'s account, as the catalog gives it."""
        return f"{self.proxy_url}/v1/{self.regions[region.upper()]}"

    def token(self) -> str:
        """A tempauth token of the cluster's user (valid on every account)."""
        return _tempauth_token(self.proxy_url, self.user, self.key)

    def create_container(self, region: str, name: str, headers: Mapping[str, str] | None = None
                         ) -> None:
        """Create the container ``name`` in ``region``'s account (with ``headers``, e.g.
        ``X-Versions-Location``); creating one that exists is harmless."""
        url = f"{self.storage_url(region)}/{urllib.parse.quote(name, safe='')}"
        request = urllib.request.Request(
            url, method="PUT", headers={"X-Auth-Token": self.token(), **(headers or {})})
        try:
            with _DIRECT.open(request, timeout=10):
                pass
        except (urllib.error.URLError, OSError) as err:
            raise DevstackError(f"cannot create the Swift container '{name}' in region "
                                f"{region}: {err}; see the logs in {self.devices.parent / 'logs'}"
                                ) from err

    def stop(self, timeout: float = 10) -> None:
        """Stop the identity service and every server (the proxy first); harmless twice."""
        self.identity.stop()
        errors: list[Exception] = []
        for process in reversed(self.processes):
            try:
                process.stop(timeout)
            except Exception as err:  # keep going: the other servers must still be stopped
                errors.append(err)
        if errors:
            raise errors[0]


def start_swift(workdir: Path, *, regions: Mapping[str, str] | None = None,
                timeout: float = 60) -> SwiftService:
    """Start a Swift cluster and its identity service with everything under ``workdir``.

    ``regions`` maps each region code of the catalog to a Swift account name (``AUTH_`` and
    letters); by default ``DEFAULT_REGIONS``. Raises ``ServiceStartError`` if the Debian
    packages are missing, the filesystem lacks extended attributes, or a server does not come
    up within ``timeout`` seconds (then nothing is left running).
    """
    regions = {code.upper(): account for code, account in (regions or DEFAULT_REGIONS).items()}
    for code, account in regions.items():
        if not account.startswith("AUTH_") or not account[5:].isalnum() or not code.isalnum():
            raise ValueError(f"region {code!r} -> account {account!r}: a region is letters and "
                             "digits, an account AUTH_ and letters or digits")
    _require_packages()
    workdir = workdir.resolve()
    etc, devices, logs = workdir / "etc", workdir / "devices", workdir / "logs"
    for directory in (etc, devices / "d1", logs):
        directory.mkdir(parents=True, exist_ok=True)
    _require_xattrs(devices / "d1")

    ports = {name: free_port() for name in ("proxy", "memcached", *_SERVERS)}
    key = secrets.token_hex(16)
    user = _run_as()
    _write_configs(etc, devices, ports, user=user, key=key)
    _build_rings(etc, ports, logs / "ring-builder.log")

    processes: list[ManagedProcess] = []
    identity: IdentityShim | None = None
    try:
        memcached = start_process(
            "swift-memcached",
            [_BIN / "memcached", "-l", HOST, "-p", str(ports["memcached"]), "-U", "0",
             "-m", "64", "-u", user],
            log_path=logs / "memcached.log")
        processes.append(memcached)
        for name in (*_SERVERS, "proxy"):
            processes.append(start_process(
                f"swift-{name}",
                [SYSTEM_PYTHON, etc / "run_server.py", etc, etc / f"{name}-server.conf",
                 f"{name}-server"],
                log_path=logs / f"{name}.log", cwd=etc))
        wait_until(lambda: _memcached_answers(ports["memcached"]), timeout=timeout,
                   what=f"memcached on {HOST}:{ports['memcached']} answers", process=memcached)
        for process, name in zip(processes[1:], (*_SERVERS, "proxy"), strict=True):
            url = f"http://{HOST}:{ports[name]}/healthcheck"
            wait_until(partial(_http_answers, url), timeout=timeout,
                       what=f"GET {url} answers", process=process)
        proxy_url = f"http://{HOST}:{ports['proxy']}"
        # tempauth hands out tokens once the proxy reaches memcached: the cluster is usable.
        wait_until(lambda: bool(_tempauth_token(proxy_url, IDENTITY_USER, key)),
                   timeout=timeout, what="tempauth gives a token", process=processes[-1])
        identity = IdentityShim(proxy_url, regions, logs / "identity.log")
        return SwiftService(proxy_url=proxy_url, identity_url=identity.url, user=IDENTITY_USER,
                            key=key, regions=regions, devices=devices,
                            processes=tuple(processes), identity=identity)
    except BaseException:
        if identity is not None:
            identity.stop()
        for process in reversed(processes):
            process.stop()
        raise


# --- the identity service ------------------------------------------------------------------


class IdentityShim:
    """Stands in for Rackspace Identity: ``POST /v2.0/tokens`` (Keystone v2.0).

    Takes the credentials as Rackspace does (``RAX-KSKEY:apiKeyCredentials`` with ``username``
    and ``apiKey``) or as Keystone does (``passwordCredentials``), checks them against tempauth,
    and returns tempauth's token with a catalog of one ``object-store`` endpoint per region.
    An HTTP server in a daemon thread of this process; ``stop()`` shuts it down.
    """

    def __init__(self, proxy_url: str, regions: Mapping[str, str], log_path: Path) -> None:
        self.proxy_url = proxy_url
        self.regions = dict(regions)
        self._log: IO[str] = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._server = ThreadingHTTPServer((HOST, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="swift-identity", daemon=True)
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        """The ``auth_url`` of the identity service (Keystone v2.0)."""
        return f"http://{HOST}:{self._server.server_address[1]}/v2.0"

    def log(self, line: str) -> None:
        self._log.write(f"{datetime.now(UTC).isoformat()} {line}\n")
        self._log.flush()

    def access(self, username: str, key: str) -> tuple[int, dict[str, Any]]:
        """The status and JSON body answering a token request for ``username``/``key``."""
        try:
            token, lifetime = _tempauth_login(self.proxy_url, username, key)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 401:
                return 401, {"unauthorized": {"code": 401,
                                              "message": "Username or api key is invalid."}}
            return 503, {"serviceUnavailable": {"code": 503,
                                                "message": f"tempauth answered {err.code}"}}
        except (urllib.error.URLError, OSError) as err:
            return 503, {"serviceUnavailable": {"code": 503,
                                                "message": f"the proxy is unreachable: {err}"}}
        expires = datetime.now(UTC) + timedelta(seconds=lifetime)
        endpoints = [{"region": region, "tenantId": account,
                      "publicURL": f"{self.proxy_url}/v1/{account}",
                      "internalURL": f"{self.proxy_url}/v1/{account}"}
                     for region, account in self.regions.items()]
        return 200, {"access": {
            "token": {"id": token, "expires": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                      "tenant": {"id": _TEMPAUTH_ACCOUNT, "name": _TEMPAUTH_ACCOUNT}},
            "serviceCatalog": [{"name": "cloudFiles", "type": "object-store",
                                "endpoints": endpoints}],
            "user": {"id": username, "name": username,
                     "roles": [{"name": "object-store:admin"}]},
        }}

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._log.close()


def _handler_for(shim: IdentityShim) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v2.0/tokens":
                self._answer(404, {"itemNotFound": {"code": 404, "message": "not found"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                auth = body["auth"]
                credentials = (auth.get("RAX-KSKEY:apiKeyCredentials")
                               or auth["passwordCredentials"])
                username = str(credentials["username"])
                key = str(credentials.get("apiKey", credentials.get("password", "")))
            except (ValueError, KeyError, TypeError, AttributeError):
                self._answer(400, {"badRequest": {"code": 400,
                                                  "message": "malformed token request"}})
                return
            status, document = shim.access(username, key)
            self._answer(status, document)

        def _answer(self, status: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            shim.log(format % args)

    return Handler


# --- tempauth ------------------------------------------------------------------------------

# Requests to the cluster go straight to 127.0.0.1: an http_proxy in the environment must not
# intercept them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tempauth_login(proxy_url: str, username: str, key: str) -> tuple[str, int]:
    """tempauth's token for ``username`` and its lifetime in seconds (v1.0 auth)."""
    request = urllib.request.Request(f"{proxy_url}/auth/v1.0", headers={
        "X-Auth-User": f"{_TEMPAUTH_ACCOUNT}:{username}", "X-Auth-Key": key})
    with _DIRECT.open(request, timeout=10) as response:
        return response.headers["X-Auth-Token"], int(response.headers["X-Auth-Token-Expires"])


def _tempauth_token(proxy_url: str, username: str, key: str) -> str:
    try:
        return _tempauth_login(proxy_url, username, key)[0]
    except (urllib.error.URLError, OSError) as err:
        raise DevstackError(f"tempauth on {proxy_url} gave no token for {username}: {err}"
                            ) from err


# --- starting ------------------------------------------------------------------------------


def _require_packages() -> None:
    wanted = [_BIN / f"swift-{name}-server" for name in (*_SERVERS, "proxy")]
    wanted += [_BIN / "swift-ring-builder", _BIN / "memcached", SYSTEM_PYTHON]
    missing = [str(path) for path in wanted if not path.is_file()]
    if missing:
        raise ServiceStartError(
            f"Swift is not installed ({', '.join(missing)} missing): install Debian's packages "
            f"{', '.join(DEBIAN_PACKAGES)} (`make test` does: {APT_GET_INSTALL})",
            service="swift")


def _require_xattrs(device: Path) -> None:
    probe = device / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.swift.probe", b"1")
    except OSError as err:
        raise ServiceStartError(
            f"the filesystem of {device} does not keep extended attributes ({err}), which the "
            "Swift object server stores metadata in; give start_swift a work directory on "
            "ext4, xfs or btrfs", service="swift") from err
    finally:
        probe.unlink()


def _run_as() -> str:
    """Who the servers run as: ourselves (Swift and memcached switch to the user named in their
    config, so it must be the user that owns ``workdir``)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _write_configs(etc: Path, devices: Path, ports: Mapping[str, int], *, user: str,
                   key: str) -> None:
    (etc / "run_server.py").write_text(_RUN_SERVER)
    # Kept once written: where the object server files an object depends on the hash prefix
    # and suffix, so a cluster started again on the same workdir still finds its objects.
    if not (etc / "swift.conf").exists():
        (etc / "swift.conf").write_text(
            "[swift-hash]\n"
            f"swift_hash_path_prefix = {secrets.token_hex(8)}\n"
            f"swift_hash_path_suffix = {secrets.token_hex(8)}\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
    common = (
        "[DEFAULT]\n"
        f"bind_ip = {HOST}\n"
        "workers = 0\n"  # one process per server, no forking: stop() signals it alone
        f"user = {user}\n"
        f"swift_dir = {etc}\n"
        f"devices = {devices}\n"
        "mount_check = false\n"
        "disable_fallocate = true\n"
        "log_custom_handlers = __main__.console_only\n"
    )
    for name in _SERVERS:
        (etc / f"{name}-server.conf").write_text(
            f"{common}bind_port = {ports[name]}\n\n"
            f"[pipeline:main]\npipeline = healthcheck {name}-server\n\n"
            "[filter:healthcheck]\nuse = egg:swift#healthcheck\n\n"
            f"[app:{name}-server]\nuse = egg:swift#{name}\n")
    (etc / "proxy-server.conf").write_text(
        f"{common}bind_port = {ports['proxy']}\n\n"
        "[pipeline:main]\n"
        "pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats "
        "bulk tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server\n\n"
        "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n"
        "[filter:tempauth]\nuse = egg:swift#tempauth\n"
        f"user_{_TEMPAUTH_ACCOUNT}_{IDENTITY_USER} = {key} .admin .reseller_admin\n\n"
        "[filter:cache]\nuse = egg:swift#memcache\n"
        f"memcache_servers = {HOST}:{ports['memcached']}\n\n"
        "[filter:versioned_writes]\nuse = egg:swift#versioned_writes\n"
        "allow_versioned_writes = true\nallow_object_versioning = true\n\n"
        + "".join(f"[filter:{name}]\nuse = egg:swift#{name.replace('-', '_')}\n\n" for name in (
            "catch_errors", "gatekeeper", "healthcheck", "proxy-logging", "listing_formats",
            "bulk", "copy", "slo", "dlo", "symlink")))


def _build_rings(etc: Path, ports: Mapping[str, int], log_path: Path) -> None:
    """One ring per server kind, one device each, built with ``swift-ring-builder`` (the three
    side by side: each command is a Python start of half a second)."""
    def build(name: str) -> str:
        builder = etc / f"{name}.builder"
        for args in (["create", str(_RING_PART_POWER), "1", "1"],
                     ["add", f"r1z1-{HOST}:{ports[name]}/d1", "1"],
                     ["rebalance"]):
            result = subprocess.run([_BIN / "swift-ring-builder", builder, *args],
                                    capture_output=True, text=True, check=False, cwd=etc,
                                    timeout=60)
            if result.returncode != 0:
                return (f"swift-ring-builder {builder.name} {' '.join(args)} failed with "
                        f"status {result.returncode}: {result.stdout}{result.stderr}")
        return ""

    with ThreadPoolExecutor(max_workers=len(_SERVERS)) as pool:
        failures = [failure for failure in pool.map(build, _SERVERS) if failure]
    if failures:
        log_path.write_text("\n".join(failures))
        raise ServiceStartError(f"building the Swift rings failed: {failures[0]}",
                                service="swift", log_tail=failures[0])


def _memcached_answers(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.sendall(b"version\r\n")
        return sock.recv(64).startswith(b"VERSION")


def _http_answers(url: str) -> bool:
    with _DIRECT.open(url, timeout=2) as response:
        return bool(response.status == 200)
