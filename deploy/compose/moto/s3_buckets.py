"""The S3 buckets of the compose stack, in moto: ``create`` them, or ``check`` that they exist.

RV_S3_BUCKETS lists them as ``<domain>:<bucket>:<region>`` separated by spaces; docker-compose.yml
sets it from the same names and regions as deploy/compose/regionvault.yaml (a test compares
them). Each bucket is created in its domain's region, which regionvault asks S3 for before it
writes, and gets the lifecycle rules the embedded stack gives its buckets: personal-data
backups expire after 28 days (a backstop behind regionvault's own expiry) and abandoned
multipart uploads after a day.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

ENDPOINT = os.environ.get("RV_S3_ENDPOINT", "http://127.0.0.1:5000")


def buckets() -> list[list[str]]:
    return [item.split(":") for item in os.environ["RV_S3_BUCKETS"].split()]


def client(region: str):
    return boto3.client("s3", endpoint_url=ENDPOINT, region_name=region,
                        config=Config(s3={"addressing_style": "path"}))


def region_of(bucket: str, region: str) -> str | None:
    try:
        location = client(region).get_bucket_location(Bucket=bucket)["LocationConstraint"]
    except ClientError:
        return None
    return location or "us-east-1"


def wait_for_server(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client("us-east-1").list_buckets()
            return
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def create() -> int:
    wait_for_server()
    for domain, bucket, region in buckets():
        if region_of(bucket, region) is None:
            extra = {} if region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}
            client(region).create_bucket(Bucket=bucket, **extra)
        client(region).put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={"Rules": [
                # as `regionvault provision` writes it: 28 days, since S3 rounds an
                # expiration up to the next midnight and 29 could reach almost 30
                {"ID": "regionvault-pii-ceiling", "Status": "Enabled",
                 "Filter": {"Prefix": f"{domain}/pii/"}, "Expiration": {"Days": 28}},
                {"ID": "abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
                 "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
            ]})
        print(f"s3://{bucket} ({region}) ready for domain {domain}", flush=True)
    return 0


def check() -> int:
    missing = [f"{bucket} ({region})" for _, bucket, region in buckets()
               if region_of(bucket, region) != region]
    if missing:
        print("not ready: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit({"create": create, "check": check}[sys.argv[1]]())
