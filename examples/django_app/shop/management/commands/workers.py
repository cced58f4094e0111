"""`python manage.py workers --headless` (or any `workers` command): the workers run
inside Django, so jobs may use the ORM and the project's settings."""

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

import workers


class Command(BaseCommand):
    help = "Run a workers command (--headless runs the jobs): python manage.py workers --help"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs="*", help="what `workers` takes")

    def run_from_argv(self, argv: list[str]) -> None:
        # everything after `workers` goes to workers' own parser, flags included
        sys.exit(workers.main(argv[2:], prog=f"{argv[0]} {argv[1]}"))

    def handle(self, *args: Any, **options: Any) -> None:
        sys.exit(workers.main(list(args), prog="manage.py workers"))
