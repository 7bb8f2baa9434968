"""The interpreter worker's output frames (toolbox/process/interpreter/worker.py), unit-tested:
a big write becomes pieces whose JSON strings fit the budget, are what is sent, and rejoin
to exactly the text."""

from __future__ import annotations

import json
import random

import pytest

from toolbox.process.interpreter import worker

SAMPLES = {
    "empty": "",
    "a 10 MB print": "x" * 10_000_000 + "\n",
    "two-byte characters": "é" * 70_000,
    "escapes and emoji": ("😀" * 7 + '"\\\n\t\x00\x7f') * 9_000,
    "random code points": "".join(chr(random.Random(17).randrange(1, 0x3000)) for _ in range(200_000)),
}


@pytest.mark.parametrize("text", SAMPLES.values(), ids=SAMPLES.keys())
def test_pieces_fit_the_budget_and_rejoin_exactly(text: str) -> None:
    pieces = list(worker.split_for_frames(text))
    assert "".join(piece for piece, _ in pieces) == text
    for piece, encoded in pieces:
        assert piece and encoded == json.dumps(piece)  # sent as measured: encoded once
        assert len(encoded.encode()) <= worker.MAX_FRAME_BYTES


def test_a_10_mb_print_is_about_170_frames_not_thousands() -> None:
    frames = sum(1 for _ in worker.split_for_frames(SAMPLES["a 10 MB print"]))
    assert frames == -(-10_000_001 // (worker.MAX_FRAME_BYTES - 2))  # plain ASCII fills each one


def test_an_error_field_is_clipped_within_its_budget() -> None:
    clipped = worker.clip('"' * 100_000)
    assert clipped.endswith(worker.TRUNCATED)
    assert len(json.dumps(clipped)) <= worker.MAX_ERROR_FIELD
