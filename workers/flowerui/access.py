"""Who may use Flower, and who did: basic-auth credentials from a secret, the operator's name.

Credentials never come from the command line (where ``ps`` shows them to every local user):
they come from a file (``--basic-auth-file``, one ``user:password`` a line, e.g. a mounted
Kubernetes Secret) or from ``REGIONVAULT_FLOWER_BASIC_AUTH=user:password``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path

from regionvault.errors import ConfigError

BASIC_AUTH_ENV = "REGIONVAULT_FLOWER_BASIC_AUTH"

#: what the journal and the log record when Flower runs with --dev-no-auth
ANONYMOUS = "anonymous (flower --dev-no-auth)"


def _pair(entry: str, where: str) -> str:
    user, sep, password = entry.partition(":")
    if not sep or not user.strip() or not password:
        # never echo the entry: it may be a password with the colon missing
        raise ConfigError(f"{where} is not of the form user:password; fix it and start again")
    if user != user.strip():
        raise ConfigError(f"{where} has spaces around the user name; remove them")
    return f"{user}:{password}"


def basic_auth_from_file(path: Path) -> list[str]:
    """The ``user:password`` lines of ``path`` (blank lines and ``#`` comments ignored)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the Flower basic-auth file {path} ({exc.strerror or exc}); "
            "give a readable file with one user:password a line") from None
    pairs = [_pair(line.rstrip("\r\n"), f"line {n} of {path}")
             for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not pairs:
        raise ConfigError(f"the Flower basic-auth file {path} holds no user:password line")
    return pairs


def basic_auth_from(file: Path | None, env: Mapping[str, str]) -> list[str]:
    """Credentials from ``--basic-auth-file`` (preferred) or the environment; [] if neither."""
    if file is not None:
        return basic_auth_from_file(file)
    value = env.get(BASIC_AUTH_ENV, "").strip()
    return [_pair(value, BASIC_AUTH_ENV)] if value else []


def basic_auth_user(authorization: str | None) -> str | None:
    """The user name in an ``Authorization: Basic ...`` header (already checked by Flower)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme != "Basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, _ = decoded.partition(":")
    return user if sep and user else None


def operator_name(current_user: object, authorization: str | None) -> str:
    """Who is acting: the OAuth e-mail Flower's session holds, else the basic-auth user.

    Flower's ``current_user`` is the e-mail under OAuth and merely ``True`` under basic auth,
    so the basic-auth user is read from the request's header (which Flower has verified).
    """
    if isinstance(current_user, str) and current_user:
        return current_user
    return basic_auth_user(authorization) or ANONYMOUS
