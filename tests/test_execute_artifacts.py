"""The streaming artifact filter gives exactly Daytona's split-on-newline result, however the
output is cut into chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
import random

import anyio

from toolbox.process.execute.artifacts import MARKER, ArtifactFilter


def daytona_reference(output: bytes) -> tuple[bytes, int]:
    kept, charts = [], 0
    for line in output.split(b"\n"):
        if line.startswith(MARKER):
            try:
                artifact = json.loads(line[len(MARKER):])
            except ValueError:
                continue
            charts += isinstance(artifact, dict) and artifact.get("type") == "chart"
        else:
            kept.append(line)
    return b"\n".join(kept), charts


async def run_filter(chunks: list[bytes]) -> tuple[bytes, int]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    artifacts = ArtifactFilter()
    out = b"".join([part async for part in artifacts.filter(source())])
    return out, len(artifacts.charts)


def test_filter_matches_reference_for_any_chunking() -> None:
    chart = MARKER + b'{"type":"chart","value":{"type":"line","elements":[{"label":"a","points":[[1,2]]}]}}'
    pieces = [b"plain", b"", b"dtn", MARKER[:-1] + b"x", chart, MARKER + b"junk", b"\xff\xfe", b"x" * 100]
    rng = random.Random(7)
    for _ in range(300):
        output = b"\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.5:
            output += b"\n"
        cuts = sorted(rng.sample(range(1, len(output)), min(len(output) - 1, rng.randint(0, 6)))) if len(output) > 1 else []
        chunks = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
        assert anyio.run(run_filter, chunks) == daytona_reference(output), chunks
