"""The ``regionvault`` console script: the core's command line, given its way to the workers.

The core (``regionvault.cli``) imports no Celery; it reaches the workers only through the
``regionvault.dispatch.Dispatcher`` it is handed. This module, outside the core, is where the
Celery side is plugged in: ``main`` passes ``workers.dispatch.CeleryDispatcher`` and adds the
one command that is Celery through and through, ``flower``.

Nothing of ``workers`` is imported when this module is: the Celery app reads its
configuration (``REGIONVAULT_CONFIG``) when it is imported, so it is imported when a command
first needs it, after ``--config`` was exported and the command has checked the file (a
broken configuration is one sentence on stderr, not a traceback from an import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from regionvault import cli
from regionvault.cli.common import ConfigOption, config_from, err, guarded
from regionvault.dispatch import Dispatcher
from regionvault.domains import Domain, parse_domain

#: the commands that are Celery's own (listed after the core's)
celery_commands = typer.Typer()


def connect_celery(domain: Domain) -> Dispatcher:
    """The workers of ``domain``, on its broker, through the Celery app (``workers.app``)
    configured from the environment of the moment (``--config``, or the demo's stack)."""
    from workers.dispatch import CeleryDispatcher

    return CeleryDispatcher(domain)


@celery_commands.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="port to listen on")] = 5555,
    address: Annotated[str | None, typer.Option(
        help="address to listen on (default: every address; 127.0.0.1 with --dev-no-auth)",
        show_default=False)] = None,
    basic_auth_file: Annotated[Path | None, typer.Option(
        "--basic-auth-file",
        help="file with one user:password a line (else REGIONVAULT_FLOWER_BASIC_AUTH)")] = None,
    auth: Annotated[str | None, typer.Option(
        "--auth", help="Flower OAuth: regexp of the e-mails allowed in")] = None,
    auth_provider: Annotated[str | None, typer.Option(
        "--auth-provider", help="Flower OAuth: e.g. flower.views.auth.GithubLoginHandler")] = None,
    oauth2_key: Annotated[str | None, typer.Option(
        "--oauth2-key", help="Flower OAuth: client id (the secret: FLOWER_OAUTH2_SECRET)")] = None,
    oauth2_redirect_uri: Annotated[str | None, typer.Option(
        "--oauth2-redirect-uri", help="Flower OAuth: redirect URI")] = None,
    dev_no_auth: Annotated[bool, typer.Option(
        "--dev-no-auth", help="run WITHOUT authentication (development only)")] = False,
    domain: Annotated[str | None, typer.Option(
        "--domain", "-d", help="serve this domain's broker (a domain with its own broker has "
        "its own Flower); default: the shared broker")] = None,
    config: ConfigOption = None,
) -> None:
    """Run Flower for the app, with Retry on failed tasks and a Backups page.

    Authentication is required: basic auth from a file or REGIONVAULT_FLOWER_BASIC_AUTH, or
    Flower's OAuth options. Any other Flower option passes through as --name=value.
    """

    def run() -> None:
        if config is not None:  # (`main` does this; a caller of `app` may not)
            os.environ["REGIONVAULT_CONFIG"] = str(config.resolve())
        if domain is not None:
            # a process of the domain, as its workers and beat are: it connects to the
            # domain's broker (workers.app reads this when it is first imported, below)
            served = parse_domain(domain)
            config_from(config).domain(served)  # a domain not configured: one sentence
            os.environ["REGIONVAULT_DOMAIN"] = served.value
        from workers.flowerui import app as flowerui
        from workers.flowerui.access import basic_auth_from

        flower_args = [f"--{name}={value}" for name, value in (
            ("auth", auth), ("auth_provider", auth_provider), ("oauth2_key", oauth2_key),
            ("oauth2_redirect_uri", oauth2_redirect_uri)) if value is not None]
        listen = address if address is not None else ("127.0.0.1" if dev_no_auth else "")
        options = flowerui.flower_options(
            port=port, address=listen,
            basic_auth=basic_auth_from(basic_auth_file, os.environ),
            flower_args=[*flower_args, *ctx.args], dev_no_auth=dev_no_auth,
            warn=lambda message: err.print(f"[bold yellow]{message}[/]", highlight=False,
                                           soft_wrap=True))
        # the Celery app (and so the configuration) only once the options are known good
        from workers.app import app as celery_app

        flowerui.run(celery_app, options)

    guarded(run)


#: what `regionvault` runs: every command of the core and Celery's own, at the top level
app = typer.Typer(no_args_is_help=True, help=cli.app.info.help)
app.add_typer(cli.app)
app.add_typer(celery_commands)


def main() -> None:
    cli.main(connect_celery, app)


if __name__ == "__main__":
    main()
