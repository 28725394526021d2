"""AWS KMS as a key wrapper: a KMS key in the domain's own region wraps each data key.

Data keys are generated locally and sent to ``Encrypt`` (so the same key is also wrapped by
the local escrow); ``Decrypt`` gets them back. The encryption context names the domain, the
backup id and the purpose: KMS refuses a wrapping moved to another backup, and CloudTrail
records which backup a decryption was for. botocore errors are translated here: a KMS that
cannot be reached is ``KeyServiceUnavailable`` (a restore moves on to the escrow wrapping, a
step retries), a KMS that refuses is ``WrongKeyError``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from regionvault.config import Config
from regionvault.domains import Domain
from regionvault.errors import ConfigError, KeyServiceUnavailable, ResidencyError, WrongKeyError
from regionvault.keyring import WrapContext, Wrapping

#: KMS error codes that another try may get past
_TRANSIENT_CODES = {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException",
                    "LimitExceededException", "InternalFailure", "ServiceUnavailable"}
_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):\d{12}:key/[A-Za-z0-9-]+$")


def kms_client(config: Config, region: str) -> Any:
    """A KMS client of ``region``, one attempt per call (the caller decides what next)."""
    return boto3.client(
        "kms", region_name=region, endpoint_url=config.kms.endpoint_url,
        config=BotoConfig(connect_timeout=config.kms.connect_timeout_seconds,
                          read_timeout=config.kms.read_timeout_seconds,
                          retries={"max_attempts": 1, "mode": "standard"}))


def key_region(key_arn: str) -> str:
    match = _ARN_RE.fullmatch(key_arn)
    if match is None:
        raise ConfigError(f"{key_arn!r} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
    return match["region"]


def _translate(exc: Exception, doing: str) -> Exception:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return KeyServiceUnavailable(f"AWS KMS could not {doing}: {code or status}, "
                                         "worth another try")
        return WrongKeyError(f"AWS KMS refused to {doing}: {code}")
    return KeyServiceUnavailable(f"AWS KMS could not be reached to {doing} "
                                 f"({type(exc).__name__})")


class AwsKmsWrapper:
    """Wraps data keys with the domain's current KMS key; opens them with any held KMS key."""

    name = "aws-kms"

    def __init__(self, domain: Domain, region: str, client: Any, current: str,
                 held: tuple[str, ...]) -> None:
        for arn in {current, *held}:
            if key_region(arn) != region:
                raise ResidencyError(
                    f"KMS key {arn} lies in region {key_region(arn)!r}; domain "
                    f"{domain.value!r} keeps its keys in {region!r} only")
        self.domain = domain
        self.region = region
        self._client = client
        self.current_key_id = current
        self._held = held

    @classmethod
    def for_domain(cls, config: Config, domain: Domain, current: str,
                   held: tuple[str, ...]) -> AwsKmsWrapper:
        region = config.domain(domain).aws_region
        return cls(domain, region, kms_client(config, region), current, held)

    def __repr__(self) -> str:
        return f"AwsKmsWrapper(domain={self.domain.value!r}, current={self.current_key_id!r})"

    def key_ids(self) -> tuple[str, ...]:
        return self._held

    def holds(self, key_id: str) -> bool:
        return key_id in self._held

    def wrap(self, data_key: bytes | bytearray, context: WrapContext) -> Wrapping:
        try:
            reply = self._client.encrypt(KeyId=self.current_key_id, Plaintext=bytes(data_key),
                                         EncryptionContext=context.kms())
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"wrap a data key with {self.current_key_id}") from None
        return Wrapping.of(self.name, self.current_key_id, reply["CiphertextBlob"])

    def unwrap(self, wrapping: Wrapping, context: WrapContext) -> bytearray:
        if not self.holds(wrapping.key_id):
            raise WrongKeyError(f"domain {self.domain.value!r} does not hold KMS key "
                                f"{wrapping.key_id} (it was retired, or is another domain's)")
        try:
            reply = self._client.decrypt(KeyId=wrapping.key_id, CiphertextBlob=wrapping.raw(),
                                         EncryptionContext=context.kms())
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"open a data key with {wrapping.key_id}") from None
        return bytearray(reply["Plaintext"])

    def key_state(self, key_id: str) -> str:
        """KMS's state of a key ("Enabled", "PendingDeletion", ..., or "NotFound")."""
        try:
            meta = self._client.describe_key(KeyId=key_id)["KeyMetadata"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NotFoundException":
                return "NotFound"
            raise _translate(exc, f"describe {key_id}") from None
        except BotoCoreError as exc:
            raise _translate(exc, f"describe {key_id}") from None
        return str(meta.get("KeyState", "Unknown"))


def create_kms_key(config: Config, domain: Domain) -> str:
    """A new symmetric KMS key in the domain's region for its data keys; its ARN."""
    region = config.domain(domain).aws_region
    client = kms_client(config, region)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        meta = client.create_key(
            Description=f"regionvault data keys of domain {domain.value} ({stamp})",
            KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT",
            Tags=[{"TagKey": "regionvault:domain", "TagValue": domain.value}],
        )["KeyMetadata"]
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, f"create a key in {region}") from None
    arn = str(meta["Arn"])
    if key_region(arn) != region:
        raise ResidencyError(f"KMS created key {arn} outside region {region!r}")
    return arn


def schedule_kms_key_deletion(config: Config, domain: Domain, key_arn: str,
                              days: int = 7) -> datetime | None:
    """Ask KMS to delete a retired key after ``days`` (7-30; KMS's own safety window); when
    it will, or None if KMS no longer knows the key (nothing left to delete)."""
    client = kms_client(config, config.domain(domain).aws_region)
    # ScheduleKeyDeletion acts only on a key of the caller's own account (no cross-account
    # use) and the client's region, so the bare key id names the same key as the ARN; and
    # moto (the dev stack's KMS) accepts only the id here (an ARN is a 500 there).
    key_id = key_arn.rsplit("/", 1)[-1]
    try:
        reply = client.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=days)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NotFoundException":
            return None
        raise _translate(exc, f"schedule the deletion of {key_arn}") from None
    except BotoCoreError as exc:
        raise _translate(exc, f"schedule the deletion of {key_arn}") from None
    when = reply.get("DeletionDate")
    return when if isinstance(when, datetime) else datetime.now(UTC)
