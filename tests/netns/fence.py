"""A network fence per domain, for tests: one network namespace each, reached over a veth pair.

Each domain gets a namespace ``rv-<tag>-<domain>`` and a veth pair: the root namespace's end
holds ``10.A.B.1/24``, the namespace's end ``10.A.B.2/24`` (the domain's servers listen there,
its workers run there). The root namespace (the CLI, beat, the test itself) reaches every
domain's /24 directly; a domain's namespace knows only its own /24 and loopback, with no
default route, so another domain's address gives ENETUNREACH before a packet is sent.

Two more layers, in nftables, hold even if somebody adds a route:

- in each domain's namespace, output goes only to loopback and the domain's own /24; the rest
  is rejected (ICMP admin-prohibited: EHOSTUNREACH), IPv4 counted (counter ``refused``), and
  input from outside the /24 is dropped and counted (counter ``foreign``): that counter says
  whether anything of another domain ever reached this one's servers;
- in the root namespace, nothing is forwarded to or from a domain's veth.

Everything needs root (CAP_NET_ADMIN) and iproute2 and nftables (``make servers`` installs
them). A machine that refuses is a failure of the test, loudly: never a skip, because a fence
that was not built proves nothing.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from regionvault.domains import Domain

#: candidate second octets of the 10.A.B.0/24 blocks (three consecutive /24s per fence)
_SECOND_OCTETS = range(200, 250)
_TABLE = "regionvault_fence"
_sequence = itertools.count()


class FenceError(AssertionError):
    """The fence could not be built or torn down as asked."""


@dataclass(frozen=True)
class DomainNet:
    """One domain's place in the fence."""

    domain: Domain
    #: the network namespace (``ip netns``) of its servers and workers
    netns: str
    subnet: ipaddress.IPv4Network
    #: the namespace's end of the veth: every server of the domain listens here
    address: str
    #: the root namespace's end of the veth, where the CLI's connections come from
    gateway: str
    host_if: str
    ns_if: str

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the domain's namespace."""
        return [_tool("ip"), "netns", "exec", self.netns, *argv]

    def inode(self) -> int:
        """The namespace's inode: ``/proc/<pid>/ns/net`` of a process inside has the same."""
        return os.stat(f"/run/netns/{self.netns}").st_ino


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.is_file()),
        None)
    if found is None:
        pytest.fail(
            f"NETWORK FENCE UNAVAILABLE: {name} is not installed, so the per-domain network "
            "namespaces of tests/netns cannot be built. Install it (`make servers` installs "
            "iproute2 and nftables). This test fails rather than skips: residency at the "
            "network layer is then unproven.", pytrace=False)
    return found


def _run(argv: Sequence[str], *, stdin: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          check=False, timeout=30)
    if check and done.returncode != 0:
        raise FenceError(f"{' '.join(argv)} failed with status {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()}")
    return done


def netns_inode_of(pid: int) -> int:
    """The inode of the network namespace that process ``pid`` runs in."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


class Fence:
    """Namespaces, veths and nftables rules for ``domains``; ``with Fence(...) as fence``
    builds them and tears everything down afterwards, whatever happened in between."""

    def __init__(self, domains: Iterable[Domain]) -> None:
        self.domains = tuple(domains)
        # unique per process and per fence; interface names stay within 15 characters
        self.tag = f"{os.getpid()}{chr(ord('a') + next(_sequence) % 26)}"
        self.nets: dict[Domain, DomainNet] = {}
        self._root_table = f"{_TABLE}_{self.tag}"
        self._root_table_made = False

    # --- building ----------------------------------------------------------------------------

    def up(self) -> Fence:
        ip, nft = _tool("ip"), _tool("nft")
        subnets = self._free_subnets(len(self.domains))
        try:
            for index, (domain, subnet) in enumerate(zip(self.domains, subnets, strict=True)):
                hosts = list(subnet.hosts())
                net = DomainNet(
                    domain=domain, netns=f"rv-{self.tag}-{domain.value}", subnet=subnet,
                    gateway=str(hosts[0]), address=str(hosts[1]),
                    host_if=f"rvh{self.tag}{index}", ns_if=f"rvn{self.tag}{index}")
                self._add_namespace(ip, net)
                self.nets[domain] = net
                self._wire(ip, net)
                self._fence_namespace(nft, net)
            self._fence_root(nft)
        except BaseException:
            self.down()
            raise
        return self

    def _add_namespace(self, ip: str, net: DomainNet) -> None:
        done = _run([ip, "netns", "add", net.netns], check=False)
        if done.returncode != 0:
            pytest.fail(
                "NETWORK NAMESPACES REFUSED: `ip netns add "
                f"{net.netns}` failed with status {done.returncode} "
                f"({(done.stderr or done.stdout).strip()}). The residency fence of tests/netns "
                "needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN (uid "
                f"{os.geteuid()} here). Without it, nothing shows that one domain's workers "
                "cannot reach another domain's servers: this is a FAILURE, not a skip. Run the "
                "suite as root on a machine (or container) that allows network namespaces.",
                pytrace=False)

    @staticmethod
    def _wire(ip: str, net: DomainNet) -> None:
        prefix = net.subnet.prefixlen
        _run([ip, "link", "add", net.host_if, "type", "veth", "peer", "name", net.ns_if,
              "netns", net.netns])
        _run([ip, "addr", "add", f"{net.gateway}/{prefix}", "dev", net.host_if])
        _run([ip, "link", "set", net.host_if, "up"])
        _run([ip, "-n", net.netns, "link", "set", "lo", "up"])
        _run([ip, "-n", net.netns, "addr", "add", f"{net.address}/{prefix}", "dev", net.ns_if])
        _run([ip, "-n", net.netns, "link", "set", net.ns_if, "up"])
        # the kernel adds only the connected /24; say so rather than assume it
        routes = json.loads(_run([ip, "-n", net.netns, "-j", "-4", "route", "show"]).stdout)
        destinations = {r.get("dst") for r in routes}
        if destinations != {str(net.subnet)}:
            raise FenceError(f"namespace {net.netns} has routes {sorted(map(str, destinations))}"
                             f", expected only {net.subnet}")

    @staticmethod
    def _fence_namespace(nft: str, net: DomainNet) -> None:
        ruleset = f"""
table inet {_TABLE} {{
    counter refused {{ }}
    counter foreign {{ }}
    chain output {{
        type filter hook output priority filter; policy drop;
        oif "lo" accept
        ip daddr {net.subnet} accept
        ip daddr != {net.subnet} counter name "refused" reject with icmpx type admin-prohibited
        reject with icmpx type admin-prohibited
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iif "lo" accept
        ip saddr != {net.subnet} counter name "foreign" drop
    }}
}}
"""
        _run([*net.exec_argv([nft, "-f", "-"])], stdin=ruleset)

    def _fence_root(self, nft: str) -> None:
        ruleset = f"""
table inet {self._root_table} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "rvh{self.tag}*" drop
        oifname "rvh{self.tag}*" drop
    }}
}}
"""
        self._root_table_made = True
        _run([nft, "-f", "-"], stdin=ruleset)

    def _free_subnets(self, count: int) -> list[ipaddress.IPv4Network]:
        """``count`` consecutive /24s in 10.200-249.x.0 that no address or route of the root
        namespace overlaps (another fence, a VPN, a container network)."""
        ip = _tool("ip")
        taken: list[ipaddress.IPv4Network] = []
        for link in json.loads(_run([ip, "-j", "-4", "addr", "show"]).stdout):
            for info in link.get("addr_info", []):
                taken.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}",
                                                  strict=False))
        for route in json.loads(_run([ip, "-j", "-4", "route", "show", "table", "all"]).stdout):
            dst = route.get("dst", "default")
            if dst != "default":
                taken.append(ipaddress.ip_network(dst, strict=False))
        pid = os.getpid()
        for attempt in range(len(_SECOND_OCTETS) * 4):
            second = _SECOND_OCTETS[(pid + attempt) % len(_SECOND_OCTETS)]
            third = ((pid // len(_SECOND_OCTETS) + attempt) * 4) % 252
            block = [ipaddress.ip_network(f"10.{second}.{third + i}.0/24") for i in range(count)]
            if not any(b.overlaps(t) for b in block for t in taken):
                return block
        raise FenceError("no free 10.200-249.x.0/24 block for the fence; remove stale "
                         "rvh* interfaces (`ip -o link`)")

    # --- reading -----------------------------------------------------------------------------

    def counter(self, domain: Domain, name: str) -> int:
        """Packets counted so far by counter ``name`` (``refused``, ``foreign``) in the
        namespace of ``domain``."""
        net = self.nets[domain]
        done = _run(net.exec_argv([_tool("nft"), "-j", "list", "counter", "inet", _TABLE, name]))
        for item in json.loads(done.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise FenceError(f"counter {name} not found in namespace {net.netns}")

    # --- tearing down ------------------------------------------------------------------------

    def down(self) -> None:
        """Remove every table, veth and namespace of this fence (those that exist); raise
        ``FenceError`` naming what could not be removed."""
        ip, nft = shutil.which("ip") or "/usr/sbin/ip", shutil.which("nft") or "/usr/sbin/nft"
        problems: list[str] = []
        if self._root_table_made:
            done = _run([nft, "delete", "table", "inet", self._root_table], check=False)
            if done.returncode != 0 and "No such file" not in done.stderr:
                problems.append(f"nft table {self._root_table}: {done.stderr.strip()}")
            self._root_table_made = False
        for net in self.nets.values():
            # deleting one end of a veth deletes both; the namespace's own table goes with it
            done = _run([ip, "link", "del", net.host_if], check=False)
            if done.returncode != 0 and "Cannot find device" not in done.stderr:
                problems.append(f"veth {net.host_if}: {done.stderr.strip()}")
            done = _run([ip, "netns", "del", net.netns], check=False)
            if done.returncode != 0 and "No such file" not in done.stderr:
                problems.append(f"namespace {net.netns}: {done.stderr.strip()}")
        deadline = time.monotonic() + 5
        for net in self.nets.values():
            while _run([ip, "link", "show", net.host_if], check=False).returncode == 0:
                if time.monotonic() > deadline:
                    problems.append(f"veth {net.host_if} still exists after 5 s")
                    break
                time.sleep(0.05)
            if Path(f"/run/netns/{net.netns}").exists():
                problems.append(f"namespace {net.netns} still exists")
        self.nets.clear()
        if problems:
            raise FenceError("the fence was not fully removed: " + "; ".join(problems))

    def __enter__(self) -> Fence:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.down()
        except FenceError as error:
            if exc is None:
                raise
            exc.add_note(str(error))


__all__ = ["DomainNet", "Fence", "FenceError", "netns_inode_of"]
