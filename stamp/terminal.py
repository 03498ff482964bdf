"""Text from the outside (clients, the database) made safe to print on a terminal.

A metering point id or attribute holding ``ESC[2J`` or an OSC sequence would clear
or retitle an operator's terminal, or hide what is printed around it, if written
raw. Intake refuses control characters, but the database may hold older rows (or
rows written by hand), so everything shown to a human goes through ``printable``.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character written as a Python-style escape
    (``\\x1b``, ``\\x85``, ``\\u202e``); newlines kept only when asked. Non-printable is
    what ``str.isprintable`` refuses: C0 and C1 controls, DEL, format characters (bidi
    overrides, zero-width), line separators, unassigned code points."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or (keep_newlines and char == "\n") else _escape(char) for char in text
    )
