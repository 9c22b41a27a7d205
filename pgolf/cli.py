"""Entry-point wrapper: a PgolfError becomes one line on stderr and exit status 2, without a traceback."""

import sys

from .errors import PgolfError


def run_cli(main, argv=None):
    try:
        main(argv)
    except PgolfError as e:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "pgolf"
        print(f"pgolf error ({prog}): {e}", file=sys.stderr)
        sys.exit(2)


def doc_summary(doc: str | None) -> str | None:
    """A module docstring's first line for argparse; None inside train_gpt.py, whose minified modules have none."""
    return doc.split("\n", 1)[0] if doc else None
