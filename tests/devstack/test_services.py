"""The embedded stack's servers: each really starts, answers over its socket, and really stops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionvault.devstack.services import (
    HOST,
    ManagedProcess,
    ServiceGroup,
    ServiceStartError,
    ServiceStopError,
    free_port,
    pg_bin_dir,
    start_gcs,
    start_postgres,
    start_process,
    start_redis,
    start_s3,
    wait_until,
)
from regionvault.errors import RegionvaultError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def group() -> Iterator[ServiceGroup]:
    # Whatever a failing test left running is stopped here; stopping twice is harmless.
    with ServiceGroup() as services:
        yield services


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def assert_gone(process: ManagedProcess, port: int) -> None:
    assert not process.alive()
    assert not accepts_connections(port), f"port {port} still accepts connections"
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    assert not process.group_alive(), "a process of its group is still running"


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind((HOST, port))


def test_redis_set_get_and_stop(tmp_path: Path, group: ServiceGroup) -> None:
    import redis

    service = group.add(start_redis(tmp_path))
    assert service.url == f"redis://127.0.0.1:{service.port}/0"
    assert service.port not in (6379,)

    client = redis.Redis.from_url(service.url)
    try:
        client.set("rv:key", b"value")
        assert client.get("rv:key") == b"value"
    finally:
        client.close()

    service.stop()
    assert_gone(service.process, service.port)
    assert service.process.log_path == tmp_path / "redis.log"
    assert "starting redis" in service.process.tail()


def test_postgres_roundtrip_pg_dump_and_stop(tmp_path: Path, group: ServiceGroup) -> None:
    service = group.add(start_postgres(tmp_path))
    assert service.port != 5432
    assert service.dsn() == f"postgresql://postgres@127.0.0.1:{service.port}/postgres"
    assert service.bin_dir == pg_bin_dir()

    service.create_database("rv_source")
    service.execute(
        "rv_source",
        "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);"
        "INSERT INTO accounts VALUES (1, 'ada'), (2, 'grace');",
    )
    rows = service.execute("rv_source", "SELECT id, name FROM accounts ORDER BY id")
    assert rows == [(1, "ada"), (2, "grace")]
    assert service.execute("rv_source", "SHOW server_version_num")[0][0].startswith("18")

    dump = subprocess.run(
        [service.bin_dir / "pg_dump", "--format=custom", "--dbname", service.dsn("rv_source")],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert dump.returncode == 0, dump.stderr.decode()
    assert dump.stdout.startswith(b"PGDMP")  # the custom format's magic

    service.drop_database("rv_source")
    assert (
        service.execute("postgres", "SELECT 1 FROM pg_database WHERE datname = 'rv_source'") == []
    )
    with pytest.raises(RegionvaultError):
        service.execute("postgres", "SELECT * FROM no_such_table")

    service.stop()
    assert_gone(service.process, service.port)
    assert "database system is shut down" in service.process.tail()


def test_s3_bucket_location_and_stop(tmp_path: Path, group: ServiceGroup) -> None:
    import boto3

    service = group.add(start_s3(tmp_path))
    assert service.endpoint == f"http://127.0.0.1:{service.port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=service.endpoint,
        region_name="eu-central-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(
        Bucket="rv-eu", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    assert s3.get_bucket_location(Bucket="rv-eu")["LocationConstraint"] == "eu-central-1"

    service.stop()
    assert_gone(service.process, service.port)


def test_s3_restart_comes_back_on_the_same_port(tmp_path: Path, group: ServiceGroup) -> None:
    import boto3

    service = group.add(start_s3(tmp_path))
    port, first = service.port, service.process

    service.restart()

    assert service.port == port
    assert service.process is not first
    assert not first.alive()
    s3 = boto3.client(
        "s3",
        endpoint_url=service.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="after-restart")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["after-restart"]
    # both runs are in the same log
    assert service.process.log_path.read_text().count("starting s3") == 2


def test_gcs_bucket_blob_roundtrip_and_stop(tmp_path: Path, group: ServiceGroup) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    service = group.add(start_gcs(tmp_path))
    client = storage.Client(
        project="regionvault-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": service.endpoint},
    )
    bucket = client.create_bucket("rv-gcs")
    bucket.blob("hello.txt").upload_from_string(b"hello, gcs")
    assert client.bucket("rv-gcs").blob("hello.txt").download_as_bytes() == b"hello, gcs"

    service.stop()
    assert_gone(service.process, service.port)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_servers_listen_on_the_address_they_are_given(tmp_path: Path,
                                                      group: ServiceGroup) -> None:
    # 127.0.0.2 is loopback too, but not the default: a probe or URL that still said
    # 127.0.0.1 would not find the server
    redis_service = group.add(start_redis(tmp_path / "redis", host="127.0.0.2"))
    s3 = group.add(start_s3(tmp_path / "s3", host="127.0.0.2"))
    gcs = group.add(start_gcs(tmp_path / "gcs", host="127.0.0.2"))

    assert redis_service.url == f"redis://127.0.0.2:{redis_service.port}/0"
    assert s3.endpoint == f"http://127.0.0.2:{s3.port}"
    assert gcs.endpoint == f"http://127.0.0.2:{gcs.port}"
    for port in (redis_service.port, s3.port, gcs.port):
        assert reachable("127.0.0.2", port)
        assert not reachable(HOST, port), f"port {port} also listens on {HOST}"

    s3.restart()
    assert s3.endpoint == f"http://127.0.0.2:{s3.port}" and reachable("127.0.0.2", s3.port)


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_servers_run_inside_a_network_namespace_and_stop_there(
        tmp_path: Path, group: ServiceGroup) -> None:
    import pwd

    from regionvault.domains import Domain
    from tests.netns.fence import Fence, netns_inode_of

    with Fence([Domain.EU]) as fence:
        net = fence.nets[Domain.EU]
        where = {"host": net.address, "netns": net.netns}
        redis_service = group.add(start_redis(tmp_path / "redis", **where))
        postgres = group.add(start_postgres(tmp_path / "postgres", **where))
        s3 = group.add(start_s3(tmp_path / "s3", **where))

        # `ip netns exec` (and setpriv, for PostgreSQL as its unprivileged user) exec the
        # server: the pid we hold is the server's own, and it runs in the namespace
        for service, program in ((redis_service, "redis-server"), (postgres, "postgres")):
            pid = service.process.pid
            assert netns_inode_of(pid) == net.inode() != netns_inode_of(os.getpid())
            assert Path(f"/proc/{pid}/comm").read_text().strip() == program
        assert "moto_server" in Path(f"/proc/{s3.process.pid}/cmdline").read_text()
        assert netns_inode_of(s3.process.pid) == net.inode()
        if os.geteuid() == 0:
            assert _uid_of(postgres.process.pid) == pwd.getpwnam("embedded_postgres").pw_uid
        # reached over the veth from our namespace, with trust for the namespace's subnet
        assert postgres.dsn() == f"postgresql://postgres@{net.address}:{postgres.port}/postgres"
        assert postgres.execute("postgres", "SELECT 1") == [(1,)]
        assert redis_service.url == f"redis://{net.address}:{redis_service.port}/0"

        s3.restart()  # comes back in the same namespace, on the same address
        assert netns_inode_of(s3.process.pid) == net.inode()
        assert reachable(net.address, s3.port)

        for service in (redis_service, postgres, s3):
            port = service.port
            service.stop()
            assert not service.process.alive()
            with pytest.raises(ProcessLookupError):
                os.kill(service.process.pid, 0)
            assert not service.process.group_alive()
            assert not reachable(net.address, port)


def test_wait_until_reports_an_exited_process_with_its_log(tmp_path: Path) -> None:
    process = start_process(
        "doomed",
        [sys.executable, "-c", "print('boom: cannot bind', flush=True); raise SystemExit(3)"],
        log_path=tmp_path / "doomed.log",
    )
    try:
        with pytest.raises(ServiceStartError) as caught:
            wait_until(lambda: False, timeout=10, what="never", process=process)
    finally:
        process.stop()
    assert caught.value.service == "doomed"
    assert "exited with status 3" in str(caught.value)
    assert "boom: cannot bind" in str(caught.value)


def test_wait_until_times_out_and_stop_kills_a_stubborn_group(tmp_path: Path) -> None:
    # A leader that ignores SIGTERM, with a child in its group: stop() must SIGKILL them both.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('stubborn up', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = start_process("stubborn", [sys.executable, "-c", script], log_path=tmp_path / "s.log")
    wait_until(lambda: "stubborn up" in process.tail(), timeout=10, what="child", process=process)
    assert process.group_alive()

    def probe() -> bool:
        raise ConnectionRefusedError("nothing listens")

    started = time.monotonic()
    with pytest.raises(ServiceStartError) as caught:
        wait_until(probe, timeout=0.5, what="a probe that never passes", process=process)
    assert time.monotonic() - started < 5
    assert "did not become ready within 0.5s" in str(caught.value)
    assert "ConnectionRefusedError" in str(caught.value)
    assert process.alive()

    process.stop(timeout=0.5)
    assert not process.alive()
    assert process.returncode == -9
    assert not process.group_alive(), "the child in the group survived"


def test_start_process_reports_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError, match="no-such-server"):
        start_process("ghost", [tmp_path / "no-such-server"], log_path=tmp_path / "ghost.log")


class _Member:
    def __init__(self, name: str, log: list[str], *, fail: bool = False) -> None:
        self.name, self._log, self._fail = name, log, fail

    def stop(self) -> None:
        self._log.append(self.name)
        if self._fail:
            raise RuntimeError(f"{self.name} would not stop")


def test_service_group_stops_all_in_reverse_even_when_one_fails() -> None:
    stopped: list[str] = []
    with pytest.raises(ServiceStopError, match="b would not stop"), ServiceGroup() as services:
        services.add(_Member("a", stopped))
        services.add(_Member("b", stopped, fail=True))
        services.add(_Member("c", stopped))
    assert stopped == ["c", "b", "a"]


def test_service_group_does_not_mask_the_body_exception() -> None:
    stopped: list[str] = []
    with pytest.raises(KeyError) as caught, ServiceGroup() as services:
        services.add(_Member("a", stopped, fail=True))
        raise KeyError("body")
    assert stopped == ["a"]
    assert any("a would not stop" in note for note in caught.value.__notes__)
