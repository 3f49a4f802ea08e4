"""Labels and patterns that policy rows hold, checked the same way wherever they are
written (admin, the staff API) and read (requests).

Patterns are RE2 expressions (google-re2): RE2 matches in time linear in the text, so a
pattern cannot backtrack catastrophically on a large message; what it cannot do in
linear time (backreferences, lookaround) it refuses to compile.
"""

from __future__ import annotations

import re

import re2

#: A task label, a tag or a slug a rule names: what reports group by, and what a CSV
#: cell holds without quoting (no comma).
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}", re.ASCII)
#: The longest pattern a rule may hold (RE2 also refuses one whose program is too big).
MAX_PATTERN = 2000


def pattern_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to whoever saved it
    return options


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a rule's pattern, or None if it can."""
    if len(pattern) > MAX_PATTERN:
        return f"A pattern is at most {MAX_PATTERN} characters."
    try:
        re2.compile(pattern, pattern_options())
    except re2.error as error:
        reason = error.args[0] if error.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        return (
            f"Not a pattern the gateway can match in linear time ({reason}). Patterns are "
            "RE2 expressions: no backreferences or lookaround."
        )
    return None
