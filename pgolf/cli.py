"""Entry-point wrapper: a PgolfError becomes one line on stderr and exit status 2, without a traceback."""

import os
import sys

from .errors import PgolfError

# Set by pgolf.launch for the ranks it starts: the launcher itself reports an interruption (exit 130), so a rank
# stopped by its forwarded signal ends quietly, and torchrun prints no failure report over it.
LAUNCHED_ENV = "PGOLF_LAUNCHED"


def interrupted_exit():
    """Exit after a SIGINT/SIGTERM stopped a stage cleanly: 130 (as a shell reports Ctrl-C), 0 under pgolf.launch."""
    sys.exit(0 if os.environ.get(LAUNCHED_ENV) else 130)


def run_cli(main, argv=None):
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "pgolf"
    try:
        main(argv)
    except PgolfError as e:
        print(f"pgolf error ({prog}): {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a stage without its own handler: outputs are written under temp names, so none is
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        interrupted_exit()


def doc_summary(doc: str | None) -> str | None:
    """A module docstring's first line for argparse; None inside train_gpt.py, whose minified modules have none."""
    return doc.split("\n", 1)[0] if doc else None
