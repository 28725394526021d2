"""Flower's Tornado application with regionvault's handlers and templates, and how to run it.

Flower builds its application from a fixed list of routes and one template directory. This
module leaves Flower's code alone and adds to what it builds:

- routes: ours are put in front of Flower's (whose list ends in a catch-all 404), through
  Tornado's router, so ``/task/<id>`` is our task page, ``/backups`` exists and ``/metrics``
  asks for the same credentials as the pages (``/healthcheck`` stays open, for probes);
- templates: ``FlowerTemplates`` looks in ``templates/`` here first, then in Flower's; a name
  that starts with ``flower/`` is always Flower's own, so our ``navbar.html`` can wrap Flower's
  and our task page can extend Flower's.

``flower_options`` sets Flower's options exactly as ``celery flower`` does (``FLOWER_*``
variables, ``flowerconfig.py``, command-line options), plus basic auth from a secret, and
refuses to go on without authentication unless told it is a development run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flower
import tornado.template
from flower import command as flower_command
from flower.app import Flower, rewrite_handler
from flower.urls import settings as flower_settings
from tornado.options import options as tornado_options

from regionvault.errors import ConfigError
from regionvault.journal import Journal
from workers.flowerui import handlers
from workers.flowerui.retry import RetryMarks

log = logging.getLogger("regionvault.flower")

TEMPLATES = Path(__file__).with_name("templates")
FLOWER_TEMPLATES = Path(flower.__file__).with_name("templates")
FLOWER_PREFIX = "flower/"

NO_AUTH = (
    "Flower needs authentication: give --basic-auth-file FILE (one user:password a line) or "
    "REGIONVAULT_FLOWER_BASIC_AUTH=user:password, or Flower's OAuth options (--auth, "
    "--auth-provider, --oauth2-key, --oauth2-redirect-uri, FLOWER_OAUTH2_SECRET); "
    "--dev-no-auth runs it open, for development only"
)
NO_AUTH_WARNING = (
    "WARNING: Flower runs WITHOUT authentication (--dev-no-auth): anyone who reaches "
    "{address}:{port} can see every domain's tasks and retry or revoke them; use this for "
    "development only (Flower's HTTP API stays closed unless FLOWER_UNAUTHENTICATED_API=true)"
)


class FlowerTemplates(tornado.template.Loader):
    """Templates from ``TEMPLATES``, falling back to Flower's; ``flower/NAME`` is Flower's."""

    def __init__(self, root: Path = TEMPLATES, flower_root: Path = FLOWER_TEMPLATES) -> None:
        super().__init__(str(root))
        self.flower_root = flower_root

    def path_of(self, name: str) -> Path:
        if name.startswith(FLOWER_PREFIX):
            return self.flower_root / name.removeprefix(FLOWER_PREFIX)
        own = Path(self.root) / name
        return own if own.is_file() else self.flower_root / name

    def _create_template(self, name: str) -> tornado.template.Template:
        # A template of Flower's that extends "base.html" resolves (relative to its own name)
        # to "flower/base.html": Flower's templates always get Flower's base, and only the
        # names Flower loads directly (like "navbar.html") can be ours.
        return tornado.template.Template(self.path_of(name).read_bytes(), name=name,
                                         loader=self)


class RegionvaultFlower(Flower):
    """Flower, with the Retry action, the Backups page and our navigation bar."""

    def __init__(self, *, capp: Any, options: Any, **settings: Any) -> None:
        settings = {**settings,
                    "template_path": str(TEMPLATES),
                    "template_loader": FlowerTemplates(),
                    "ui_modules": {"RegionvaultNavbar": handlers.Navbar}}
        super().__init__(capp=capp, options=options, **settings)
        backend = str(self.capp.conf.result_backend)
        # made once: each holds a connection pool, used from Flower's thread pool
        self.journal = Journal.from_url(backend)
        self.retry_marks = RetryMarks.for_app(self.capp)
        from workers.app import domains_of  # (the app reads its configuration on import)

        # the domains whose broker this Flower watches, and where the others' Flowers are
        self.domains_here, self.flowers_elsewhere = domains_of(self.capp)
        ours = handlers.routes()
        if options is not None and options.url_prefix:
            ours = [rewrite_handler(h, options.url_prefix) for h in ours]
        # Flower's routes end in a catch-all 404: ours must come before them.
        router = self.wildcard_router
        flowers = router.rules
        router.rules = []
        router.add_rules(ours)
        router.rules.extend(flowers)


def flower_options(*, port: int, address: str, basic_auth: Sequence[str],
                   flower_args: Sequence[str], dev_no_auth: bool,
                   warn: Callable[[str], None]) -> Any:
    """Set Flower's (global, Tornado) options; refuse to run without auth unless told to.

    ``flower_args`` are Flower's own options as ``--name=value`` (OAuth, ``--url_prefix``,
    ...). Basic-auth credentials are never among them: a password on a command line is
    visible to every local user.
    """
    for arg in flower_args:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if not arg.startswith("--") or not flower_command.is_flower_option(arg):
            raise ConfigError(f"{arg!r} is not a Flower option (pass Flower's own options as "
                              "--name=value, e.g. --url_prefix=flower)")
        if name == "basic_auth":
            raise ConfigError("basic-auth credentials are not taken on the command line (ps "
                              "shows them); use --basic-auth-file FILE or "
                              "REGIONVAULT_FLOWER_BASIC_AUTH")
    flower_command.apply_env_options()
    flower_command.apply_options("regionvault flower",
                                 [f"--port={port}", f"--address={address}", *flower_args])
    if basic_auth:
        tornado_options.basic_auth = list(basic_auth)
    if not (tornado_options.basic_auth or tornado_options.auth):
        if not dev_no_auth:
            raise ConfigError(NO_AUTH)
        warn(NO_AUTH_WARNING.format(address=address or "any address", port=port))
    return tornado_options


def run(capp: Any, options: Any) -> None:
    """Serve Flower for ``capp`` until SIGTERM or Ctrl-C (as ``celery flower`` does)."""
    flower_command.extract_settings()
    flower_command.setup_logging()
    app = RegionvaultFlower(capp=capp, options=options, **flower_settings)
    atexit.register(app.stop)
    signal.signal(signal.SIGTERM, flower_command.sigterm_handler)
    port = app.start_http_server()
    flower_command.print_banner(capp, "ssl_options" in flower_settings, port)
    log.info("regionvault additions: Retry on failed regionvault tasks, /backups")
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # SIGTERM exits via SystemExit
        app.start()
