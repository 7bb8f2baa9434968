"""Where a replay of recent terminal output may start without corrupting the screen.

A cut in the middle of an escape sequence shows garbage (`[31m`), a cut in the middle of a
UTF-8 character shows U+FFFD. Right after a line feed is always safe (neither contains a
0x0A byte); without one, the start of an escape sequence or of a UTF-8 character is.
"""

from __future__ import annotations

ESC = b"\x1b"
# Search only the head of the window: a long line without a line feed (a full-screen
# program) is still replayed, from an escape or character boundary.
SEARCH = 4096


def safe_start(data: bytes, search: int = SEARCH) -> int:
    """Index of the first safe place to start showing `data` (len(data) when none)."""
    head = data[:search]
    newline = head.find(b"\n")
    if newline != -1:
        return newline + 1
    escape = head.find(ESC)
    if escape != -1:
        return escape
    index = 0
    while index < len(data) and 0x80 <= data[index] <= 0xBF:  # UTF-8 continuation bytes
        index += 1
    return index
