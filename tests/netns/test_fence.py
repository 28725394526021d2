"""The fence itself: its second layer holds without the first, it leaves nothing behind, and a
machine that refuses namespaces fails the suite loudly instead of passing it silently."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from regionvault.domains import Domain
from tests.netns.conftest import REPO
from tests.netns.fence import DomainNet, Fence

pytestmark = pytest.mark.timeout(120)

_CONNECT = """
import socket, sys
sock = socket.socket()
sock.settimeout(3)
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    print(exc.errno or -1)
else:
    print(0)
"""


def connect_from(net: DomainNet, address: str, port: int) -> int:
    """The errno of a TCP connect to ``address:port`` from inside ``net``'s namespace (0: it
    connected; -1: it timed out)."""
    done = subprocess.run(net.exec_argv([sys.executable, "-c", _CONNECT, address, str(port)]),
                          capture_output=True, text=True, timeout=30, check=True)
    return int(done.stdout)


def leftovers(fence_tag: str) -> list[str]:
    """Namespaces, interfaces and nftables tables of the fence ``fence_tag`` that still exist."""
    found = [f"namespace {p.name}" for p in Path("/run/netns").glob(f"rv-{fence_tag}-*")]
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    found += [f"link {link['ifname']}" for link in links
              if link["ifname"].startswith((f"rvh{fence_tag}", f"rvn{fence_tag}"))]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout
    found += [f"nft {line}" for line in tables.splitlines() if fence_tag in line]
    return found


def test_a_route_around_the_fence_meets_the_nftables_reject() -> None:
    with Fence([Domain.US, Domain.EU]) as fence:
        us, eu = fence.nets[Domain.US], fence.nets[Domain.EU]
        refused = fence.counter(Domain.EU, "refused")

        # first layer: no route, so nothing is even sent
        assert connect_from(eu, us.address, 9) == errno.ENETUNREACH
        assert fence.counter(Domain.EU, "refused") == refused

        # a route someone adds by mistake: the output rules still turn the packet back
        subprocess.run(["ip", "-n", eu.netns, "route", "add", str(us.subnet), "via",
                        eu.gateway], check=True, capture_output=True)
        assert connect_from(eu, us.address, 9) == errno.EHOSTUNREACH
        assert fence.counter(Domain.EU, "refused") > refused

        # the domain's own /24 stays open: the root side's end answers (nothing listens on
        # port 9 there, so the answer is a refusal from its TCP stack)
        assert connect_from(eu, eu.gateway, 9) == errno.ECONNREFUSED
        assert fence.counter(Domain.US, "foreign") == 0
        tag = fence.tag
    assert leftovers(tag) == []


def test_the_fence_is_removed_even_when_the_test_inside_fails() -> None:
    with pytest.raises(RuntimeError, match="inside the fence"), Fence([Domain.AU]) as fence:
        tag = fence.tag
        assert leftovers(tag), "the fence was not built"
        raise RuntimeError("a test failed inside the fence")
    assert leftovers(tag) == []


def test_a_machine_that_refuses_namespaces_fails_loudly() -> None:
    # root without any capability, as in a container that may not make namespaces
    script = (
        "import pytest\n"
        "from regionvault.domains import Domain\n"
        "from tests.netns.fence import Fence\n"
        "fence = Fence([Domain.EU])\n"
        "try:\n"
        "    fence.up()\n"
        "except BaseException as exc:\n"
        "    print('failed' if isinstance(exc, pytest.fail.Exception) else\n"
        "          'skipped' if isinstance(exc, pytest.skip.Exception) else repr(exc))\n"
        "    print(exc)\n"
        "else:\n"
        "    fence.down()\n"
        "    print('built')\n"
    )
    done = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                           sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    kind, _, message = done.stdout.partition("\n")
    # pytest's failure outcome, never its skip
    assert kind == "failed", done.stdout
    assert "NETWORK NAMESPACES REFUSED" in message
    assert "this is a FAILURE, not a skip" in message
