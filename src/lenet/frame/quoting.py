"""Text from files lenet did not write (a run dir's config, a user's file names, a model's class names), quoted for
where it is shown, so that it shows as text and does nothing: a spreadsheet cell that is not a formula, a markdown
table cell that is not markup, a console line without the terminal's control sequences."""

import os
import re
from pathlib import Path

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): the six OWASP lists.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Control characters but tab and newline: ESC starts the terminal's sequences (colours, titles, cursor moves, links).
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What markdown (and the HTML it may hold) reads as markup inside a line: emphasis, code, links and images, HTML and
# entities, strikethrough, math, a table's cell border. Not `.`, `-`, `#`: they mark up only a line's start, and a
# number stays readable (0.05, not 0\.05).
MARKUP = re.compile(r"([\\`*_\[\]|<>&~$])")


def spreadsheet_cell(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula gets a leading single quote (OWASP).
    Numbers are never passed here: -0.5 stays a number."""
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


def markdown_cell(text: str) -> str:
    """Text shown as itself in a markdown table cell: markup escaped, on one line, without control characters."""
    return MARKUP.sub(r"\\\1", " ".join(terminal(text).split()))


def shown(value, most: int = 40) -> str:
    """A value read from a file, for one line of a message: its repr (quoted, escapes visible), at most `most`
    characters."""
    text = repr(value)
    return text if len(text) <= most else f"{text[: most - 3]}..."


def terminal(text: str) -> str:
    """Text printed to a console as itself: control characters (ESC and the like) shown as escapes."""
    return CONTROLS.sub(lambda match: repr(match.group())[1:-1], text)


def path_text(path: str | Path) -> str:
    """A path (or a name from a user's files) as text that prints and writes anywhere: bytes that are not UTF-8 and
    characters that do not print (a newline, a terminal escape in a file name) as backslash escapes, so that no name
    breaks a row or a terminal."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
