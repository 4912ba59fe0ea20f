"""One way for the command lines (demo.py, train_net.py, tools/) to stop on bad input: one line on
stderr, ``<program>: error: <what is wrong and how to fix it>``, exit status 2 (argparse's own
convention for usage errors), and no traceback.

    with one_line_errors("convert_reference_checkpoint.py", ReferenceCheckpointError, OSError):
        convert(...)
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, NoReturn, Type

__all__ = ["EXIT_USAGE", "fail", "one_line", "one_line_errors"]

EXIT_USAGE = 2


def one_line(message: object) -> str:
    """``message`` on one line: the lines of a multi-line message (e.g. a list of tensors) joined with "; "."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines)


def fail(program: str, message: object) -> NoReturn:
    """Print ``<program>: error: <message>`` (on one line) on stderr and exit with status 2."""
    print(f"{program}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def one_line_errors(program: str, *errors: Type[BaseException]) -> Iterator[None]:
    """Turn the exceptions of the types ``errors`` raised in the block into :func:`fail` (their
    messages name the file or value; other exceptions are bugs and keep their traceback)."""
    try:
        yield
    except errors as e:
        fail(program, e)
