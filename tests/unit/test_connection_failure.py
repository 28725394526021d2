"""A store's connection error names what the operating system said, found wherever the client
library put it: a fenced network, a refused port and an unknown host read differently."""

from __future__ import annotations

import requests
import urllib3
from botocore.exceptions import EndpointConnectionError

from regionvault.stores import gcs, s3
from regionvault.stores.streams import connection_failure


def _urllib3_error(errno: int, reason: str) -> urllib3.exceptions.NewConnectionError:
    try:
        try:
            raise OSError(errno, reason)
        except OSError:
            raise urllib3.exceptions.NewConnectionError(
                None, f"Failed to establish a new connection: [Errno {errno}] {reason}") from None
    except urllib3.exceptions.NewConnectionError as exc:
        return exc


def test_botocore_keeps_the_reason_in_its_kwargs() -> None:
    exc = EndpointConnectionError(endpoint_url="http://10.0.0.2:9000",
                                  error=_urllib3_error(101, "Network is unreachable"))
    assert connection_failure(exc) == "EndpointConnectionError: Network is unreachable"
    assert str(s3.translate_error(exc, "s3://b/k", "read")) == (
        "cannot read s3://b/k: the connection to S3 failed (EndpointConnectionError: Network "
        "is unreachable); retry later")


def test_requests_keeps_it_in_its_arguments() -> None:
    exc = requests.ConnectionError(_urllib3_error(111, "Connection refused"))
    assert str(gcs.translate_error(exc, "gs://b/k", "write")) == (
        "cannot write gs://b/k: the connection to GCS failed (ConnectionError: Connection "
        "refused); retry later")


def test_without_a_reason_the_class_is_all_there_is() -> None:
    assert connection_failure(EndpointConnectionError(endpoint_url="http://x")) == (
        "EndpointConnectionError")
