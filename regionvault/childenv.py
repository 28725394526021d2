"""The environment of the programs regionvault starts (pg_dump, pg_restore, servers, ...).

A child gets an environment built from an allowlist, never a copy of ours with some names
taken out. Our environment holds what a worker is configured with: domain keys
(``REGIONVAULT_KEY_*``, whatever name the configuration gives a secret), every other
``REGIONVAULT_*`` setting, cloud credentials (``AWS_*``, ``GOOGLE_*``), and whatever the
container platform or an operator's shell adds. A denylist has to guess every name a secret
could have, today and tomorrow, and a wrong guess leaks the secret into the child, where
``/proc/<pid>/environ``, a core dump or the program's own error output can show it. An
allowlist fails the other way: a child that misses a harmless variable says so, and the
variable is added here on purpose. The children never need our secrets: what they must know
(``PGPASSWORD`` from the DSN, say) is given to them explicitly as ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Variables a child may inherit: where programs are (``PATH``; ``LD_LIBRARY_PATH`` for client
#: libraries in a non-standard prefix), who and where it runs (``HOME`` also locates
#: ``~/.postgresql/root.crt``), language, time zone and temporary files.
INHERITED_NAMES = frozenset({
    "PATH",
    "LD_LIBRARY_PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
})

#: Prefixes of inherited variables: the locale categories (``LC_ALL``, ``LC_CTYPE``, ...).
#: ``PG*`` is not among them on purpose: libpq would read an inherited ``PGHOST`` or
#: ``PGPASSWORD`` behind the configured DSN's back. What a child needs of those comes from the
#: DSN, as ``extra``.
INHERITED_PREFIXES = ("LC_",)


def child_environment(parent: Mapping[str, str],
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: the allowlisted variables of ``parent`` (usually
    ``os.environ``), then ``extra`` on top (what the caller sets on purpose, e.g.
    ``PGPASSWORD``). Pure: ``parent`` and ``extra`` are not changed."""
    env = {name: value for name, value in parent.items()
           if name in INHERITED_NAMES or name.startswith(INHERITED_PREFIXES)}
    env.update(extra or {})
    return env
