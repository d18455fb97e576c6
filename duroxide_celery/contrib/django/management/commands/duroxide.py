"""`python manage.py duroxide COMMAND ...`: the `duroxide-celery` CLI on the project's store and Celery app.

`migrate` creates or upgrades the store's schema (`duroxide-celery db upgrade`); every other command and option is
the CLI's (`list`, `status ID`, `history ID`, `raise-event ID NAME --data JSON`, `cancel ID`, `tree ID`, ...).
"""

from __future__ import annotations

import copy
from typing import Any

from django.core.management.base import BaseCommand, CommandError

#: The CLI's global options that choose a store, an app or queues: the project's settings choose them here.
_PROJECT_FLAGS = {"--app", "-A", "--db", "--schema", "--broker", "--queue-prefix"}
_HELP = """Operate the project's durable workflows.

The store, the Celery app and the queue prefix are the project's (settings.DUROXIDE and the Celery app that
install() was given); they cannot be chosen here. Besides the commands below, `migrate` creates or upgrades the
store's schema (the same as `db upgrade`)."""


def _project_cli() -> Any:
    """The duroxide-celery CLI as manage.py shows it: the options that choose a store, app or queues hidden (the
    command gives --app itself), and a help text that says where they come from."""
    from duroxide_celery.cli import main

    group = copy.copy(main)
    group.help = _HELP
    group.params = [copy.copy(p) for p in main.params]
    for param in group.params:
        if set(param.opts) & _PROJECT_FLAGS:
            param.hidden = True  # type: ignore[attr-defined]
    return group


class Command(BaseCommand):
    help = "Operate durable workflows: migrate, list, status, history, raise-event, enqueue-event, cancel, ..."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument("args", nargs="*")
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after `duroxide` goes to the CLI untouched (its own options, e.g. --json, --data).
        self._argv = argv[2:]
        super().run_from_argv(argv[:2])

    def handle(self, *args: str, **options: Any) -> None:
        argv = list(getattr(self, "_argv", None) or args)
        for token in argv:
            flag = token.split("=", 1)[0]
            if flag in _PROJECT_FLAGS:
                # The CLI's own message ("cannot be combined with --app") would name an option nobody typed.
                raise CommandError(
                    f"{flag} cannot be given to manage.py duroxide: it works on the project's store, Celery app and "
                    "queue prefix (settings.DUROXIDE and the Celery app); run `duroxide-celery --db URL ...` for "
                    "another store"
                )
        if argv[:1] == ["migrate"]:
            argv = ["db", "upgrade", *argv[1:]]
        try:
            _project_cli().main(
                args=["--app", "duroxide_celery.contrib.django:celery_app", *argv],
                prog_name="manage.py duroxide",
                standalone_mode=False,
            )
        except SystemExit as exc:
            if exc.code:
                raise CommandError(f"exit status {exc.code}", returncode=int(exc.code)) from None
        except Exception as exc:  # click's ClickException and UsageError carry the message
            import click

            if isinstance(exc, click.ClickException):
                raise CommandError(exc.format_message(), returncode=exc.exit_code) from None
            raise
