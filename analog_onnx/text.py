"""Showing text that came from files (node names, config names, paths) on a terminal.

Such text is data, never instructions: control characters are shown escaped (an ``ESC [31m`` in
a node name must not recolour the user's terminal), and for rich output the markup brackets are
escaped too, so ``[/]`` or ``[bold]`` in a name prints as written and ``model[v2].onnx`` stays whole.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def printable(text: object) -> str:
    """``str(text)`` with every non-printable character (ESC, BEL, newline ...) as a ``\\x..`` escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def shown(text: object) -> str:
    """``text`` made safe to embed in rich markup: printable, with markup brackets escaped."""
    return escape(printable(text))


def console(*, stderr: bool = False) -> Console:
    """A rich console that turns no ``:name:`` into an emoji (names may contain colons) and never
    breaks a line of text inside a path (tables still fit the terminal)."""
    return Console(stderr=stderr, emoji=False, soft_wrap=True)
