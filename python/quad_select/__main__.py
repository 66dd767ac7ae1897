"""The ``quad`` command line from Python: the ``quad`` command the package installs and
``python -m quad_select`` run the same Rust command line as the ``quad`` binary (flags, output,
exit status), from the extension module."""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Runs ``quad`` with ``argv`` (default: this process's arguments) and returns its exit status."""
    from . import _quad

    args = sys.argv[1:] if argv is None else list(argv)
    return _quad.cli(["quad", *args])


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
