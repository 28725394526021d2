"""Try the broker and the S3 endpoint that a configuration gives one domain; print JSON.

``python -m tests.netns.probe --config FILE --domain eu [--domain us ...]`` opens a TCP
connection to each of ``config.broker_for(eu)`` and ``config.s3_endpoint_for(eu)``, exactly the
addresses a worker of that domain would use, and says whether it got there (with the server's
first answer line: ``+PONG`` from a broker, an HTTP status line from S3) or which socket error
stopped it (``errno`` 101, ENETUNREACH: no route; 113, EHOSTUNREACH: the nftables reject). The
tests run it inside a domain's network namespace and in the root namespace, with the same
configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from urllib.parse import urlsplit

from regionvault.config import load_config
from regionvault.domains import parse_domain


def attempt(url: str, request: bytes) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    result: dict[str, object] = {"url": url}
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(request)
            answer = sock.recv(256).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as exc:
        number = exc.errno or 0
        result.update(reached=False, errno=number,
                      error=os.strerror(number) if number else repr(exc))
        return result
    result.update(reached=True, answer=answer)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--domain", required=True, action="append")
    args = parser.parse_args(argv)
    # env={}: only the file decides, as it does for the workers the tests start
    config = load_config(args.config, env={})
    results = {}
    for name in args.domain:
        domain = parse_domain(name)
        s3 = config.s3_endpoint_for(domain)
        if s3 is None:
            raise SystemExit(f"domain {domain.value} has no S3 endpoint in {args.config}")
        host = urlsplit(s3).netloc
        results[domain.value] = {
            "broker": attempt(config.broker_for(domain), b"PING\r\n"),
            "s3": attempt(s3, f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()),
        }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
