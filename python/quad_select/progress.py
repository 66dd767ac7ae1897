"""How a selection reports its progress from Python: events as dicts, and the default reporter.

The library tells its observer about every stage (``{"kind": "stage", "name", "cached"}``), the
work done within it (``{"kind": "progress", "done", "total"}``), notes (``{"kind": "note",
"text"}``), the end of a stage (``{"kind": "stage_done", "name"}``) and every bandit round
(``{"kind": "round", "round", "scored", "accepted", "docs_selected", "tokens_selected",
"budget", "best_index"}``). ``select(..., on_event=f)`` hands each to ``f``; without one,
:func:`default_reporter` draws a progress bar on a terminal (tqdm when it is installed, plain lines
on stderr otherwise) and logs to the ``quad_select`` logger when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Dict, Optional, Tuple

log = logging.getLogger("quad_select")

Event = Dict[str, Any]


def _budget_progress(e: Event) -> Tuple[str, int, int]:
    """A round event's budget: its unit (``tokens`` or ``documents``), its size and how much of it
    is selected."""
    ((unit, n),) = e["budget"].items()
    return unit, n, e["tokens_selected"] if unit == "tokens" else e["docs_selected"]


class _Lines:
    """Plain lines on stderr: one per stage, a percentage at most every tenth of a stage."""

    def __init__(self) -> None:
        self.stage = ""
        self.shown = -1

    def __call__(self, e: Event) -> None:
        kind = e["kind"]
        if kind == "stage":
            self.stage, self.shown = e["name"], -1
            print(f"{e['name']}{': cached' if e['cached'] else ' ...'}", file=sys.stderr, flush=True)
        elif kind == "progress" and e["total"]:
            tenth = 10 * e["done"] // e["total"]
            if tenth > self.shown:
                self.shown = tenth
                print(f"  {self.stage}: {e['done']}/{e['total']}", file=sys.stderr, flush=True)
        elif kind == "note":
            print(e["text"], file=sys.stderr, flush=True)
        elif kind == "round":
            unit, n, used = _budget_progress(e)
            print(f"round {e['round']}: {used}/{n} {unit}, scored {e['scored']}, accepted {e['accepted']}", file=sys.stderr, flush=True)


class _Tqdm:
    """A tqdm bar per stage, and one over the budget for the rounds."""

    def __init__(self, tqdm: Any) -> None:
        self.tqdm = tqdm
        self.bar: Optional[Any] = None

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, e: Event) -> None:
        kind = e["kind"]
        if kind == "stage":
            self._close()
            self.bar = self.tqdm(desc=e["name"] + (" (cached)" if e["cached"] else ""), total=None, leave=False)
        elif kind == "progress" and self.bar is not None:
            self.bar.total = e["total"]
            self.bar.n = e["done"]
            self.bar.refresh()
        elif kind == "note":
            self.tqdm.write(e["text"], file=sys.stderr)
        elif kind == "round":
            unit, n, used = _budget_progress(e)
            if self.bar is None or self.bar.desc != "select":
                self._close()
                self.bar = self.tqdm(desc="select", total=n, unit=unit, leave=False)
            self.bar.n = used
            self.bar.set_postfix(round=e["round"], scored=e["scored"])

    def __del__(self) -> None:
        self._close()


def _logged(e: Event) -> None:
    kind = e["kind"]
    if kind == "stage":
        log.info("%s%s", e["name"], ": cached" if e["cached"] else " ...")
    elif kind == "progress":
        log.debug("%d/%d", e["done"], e["total"])
    elif kind == "note":
        log.info("%s", e["text"])
    elif kind == "round":
        log.debug("round %d: %d documents, %d tokens selected", e["round"], e["docs_selected"], e["tokens_selected"])


def default_reporter() -> Callable[[Event], None]:
    """A progress bar on a terminal (tqdm if installed, else plain lines on stderr); ``logging``
    records (the ``quad_select`` logger) when stderr is not a terminal."""
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return _logged
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Lines()
    return _Tqdm(tqdm)
