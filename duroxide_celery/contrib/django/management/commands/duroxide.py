"""`python manage.py duroxide COMMAND ...`: the `duroxide-celery` CLI on the project's store and Celery app.

`migrate` creates or upgrades the store's schema (`duroxide-celery db upgrade`); every other command and option is
the CLI's (`list`, `status ID`, `history ID`, `raise-event ID NAME --data JSON`, `cancel ID`, `tree ID`, ...).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError


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
        from duroxide_celery.cli import main

        argv = list(getattr(self, "_argv", None) or args)
        if argv[:1] == ["migrate"]:
            argv = ["db", "upgrade", *argv[1:]]
        try:
            main.main(
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
