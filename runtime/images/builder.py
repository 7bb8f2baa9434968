"""Dockerfile builds into layers (the instructions the SDK's `Image` emits, §4.3).

`FROM` resolves to an existing snapshot of the store or an image imported with
`runtime.images.oci`. Each `RUN` runs in a build sandbox (`runtime.images.steps`) over the
layers so far; its upper directory, ids shifted back to canonical ones, becomes the next
layer. `ENV`, `ARG`, `WORKDIR`, `USER`, `ENTRYPOINT` and `CMD` change the image config
(`WORKDIR` also makes its directory when no layer has it).

Layers are cached by content: a step's key is the hash of its parent's key, the
instruction as expanded and the config it runs with, so an unchanged rebuild reuses
every layer and runs nothing. `plan` checks a Dockerfile before anything runs, so a
request with one this builder cannot build is refused at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.images import context, dockerfile, publish
from runtime.images.dockerfile import DockerfileError, Instruction
from runtime.images.oci import ImageConfig, ImageError, ImageImporter, LayerStore, registry_reference
from runtime.images.steps import BUILD_ID_BASE, ID_RANGE, Confinement, Step, run_step
from runtime.uids import UidsExhausted

Log = Callable[[str], None]
SHELL = ["/bin/sh", "-c"]
STEP_TIMEOUT = 3600.0


class BuildError(Exception):
    """The build failed; the message is the snapshot's `errorReason`."""


@dataclass(frozen=True)
class Base:
    """What FROM names, resolved: layers (bottom ... top) and their config."""

    key: str  # the cache key of the base: an image digest or the snapshot's layers
    layers: tuple[str, ...]
    config: ImageConfig
    # A snapshot's `user` is who its sandboxes log in as, not an image's USER: steps built
    # on it run as root until a USER says otherwise (as on any image without USER).
    build_user: str | None = None


@dataclass
class Built:
    layers: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    size: int
    steps_run: int = 0
    steps_cached: int = 0


@dataclass
class _State:
    key: str
    layers: list[str]
    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    final_user: str | None = None  # what the built snapshot records, unless a USER changed it
    args: dict[str, str] = field(default_factory=dict)
    global_args: dict[str, str] = field(default_factory=dict)  # ARGs before FROM
    shell: list[str] = field(default_factory=lambda: list(SHELL))
    context: Path | None = None  # what COPY reads from
    id_base: int | None = None  # the build's own host id range, taken at its first RUN


    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env}


SnapshotLookup = Callable[[str], "Base | None"]
IdRanges = Callable[[], int]  # the base of a fresh range of ID_RANGE host ids (blocking)


def plan(text: str, *, has_context: bool = False, target: str | None = None) -> list[Instruction]:
    """The Dockerfile's instructions (up to the end of stage `target`, if given), or a
    DockerfileError saying what cannot be built."""
    instructions = dockerfile.parse(text)
    if target is not None:
        instructions = _up_to_stage(instructions, target)
    for instruction in instructions:
        if instruction.keyword in ("COPY", "ADD") and not has_context:
            raise instruction.fail(
                "needs files from a build context, and this build has no build context: the SDK "
                "uploads one for Image.add_local_file, add_local_dir and pip_install_from_requirements "
                "and names it in buildInfo.contextHashes (docs/images.md)")
        if instruction.keyword == "SHELL" and dockerfile.exec_form(instruction.value) is None:
            raise instruction.fail('needs the JSON form, e.g. SHELL ["/bin/bash", "-c"]')
    return instructions


def _stage_name(instruction: Instruction) -> str | None:
    parts = instruction.value.split()
    return parts[2].lower() if len(parts) == 3 and parts[1].lower() == "as" else None


def _up_to_stage(instructions: list[Instruction], target: str) -> list[Instruction]:
    """The instructions of every stage up to and including the one named `target`."""
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    names = [_stage_name(instructions[i]) for i in starts]
    if target.lower() not in names:
        named = ", ".join(n for n in names if n) or "none"
        raise DockerfileError(f"the Dockerfile has no stage named {target!r} (its named stages: {named})")
    index = names.index(target.lower())
    end = starts[index + 1] if index + 1 < len(starts) else len(instructions)
    return instructions[:end]


def from_reference(instruction: Instruction, variables: dict[str, str]) -> tuple[str, str | None]:
    """What FROM names and the stage it starts, if it is named (`FROM image AS name`)."""
    parts = dockerfile.expand(instruction.value, variables).split()
    name = None
    if len(parts) == 3 and parts[1].lower() == "as":
        parts, name = parts[:1], parts[2].lower()
    if len(parts) != 1 or parts[0].startswith("--"):
        raise instruction.fail("expected FROM image[:tag] [AS name] (flags are not supported)")
    return parts[0], name


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _lookup(layer_paths: Sequence[Path], inside: str) -> Path | None:
    """The top-most layer's entry for an absolute path, without following any symlink in
    it (a symlink component counts as the path being there); None if no layer has it."""
    parts = PurePosixPath(inside).parts[1:]
    for root in reversed(layer_paths):
        path = root
        for index, part in enumerate(parts):
            path = path / part
            try:
                st = os.lstat(path)
            except OSError:
                break
            if stat.S_ISLNK(st.st_mode) or index == len(parts) - 1:
                return path
            if not stat.S_ISDIR(st.st_mode):
                break
    return None


def _passwd_ids(layer_paths: Sequence[Path], user: str) -> tuple[int, int]:
    name, _, group = user.partition(":")
    if name.isdigit() and (not group or group.isdigit()):
        uid = int(name)
        return uid, int(group) if group else uid
    uid = gid = -1
    for file, want in (("/etc/passwd", name), ("/etc/group", group)):
        if file == "/etc/group" and not group:
            break
        found = _lookup(layer_paths, file)
        if found is None or not stat.S_ISREG(os.lstat(found).st_mode):
            raise BuildError(f"USER {user}: the image has no {file}")
        for line in found.read_text(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == want:
                if file == "/etc/passwd":
                    uid, gid = int(fields[2]), int(fields[3])
                else:
                    gid = int(fields[2])
                break
        else:
            if want.isdigit():
                gid = int(want)
            else:
                raise BuildError(f"USER {user}: no {want!r} in the image's {file}")
    if not 0 <= uid < ID_RANGE or not 0 <= gid < ID_RANGE:
        raise BuildError(f"USER {user}: ids must be below {ID_RANGE}")
    return uid, gid


def _as_base(state: _State) -> Base:
    """A finished stage, as what a later `FROM <stage>` starts from."""
    config = ImageConfig(env=dict(state.env), workdir=state.workdir, user=state.final_user or state.user,
                         entrypoint=state.entrypoint, cmd=state.cmd)
    return Base(state.key, tuple(state.layers), config)


class Builder:

    def __init__(self, store: LayerStore, importer: ImageImporter, *,
                 snapshots: SnapshotLookup | None = None, id_ranges: IdRanges | None = None,
                 step_timeout: float = STEP_TIMEOUT,
                 confinement: Callable[[], Confinement | None] | None = None) -> None:
        self.store = store
        self.importer = importer
        self.snapshots = snapshots or (lambda name: None)
        # Each build's steps run as a host id range of their own (a runtime's: from the
        # host-wide list sandboxes use); builds run directly (tests, benchmarks) share one.
        self.id_ranges = id_ranges or (lambda: BUILD_ID_BASE)
        self.step_timeout = step_timeout
        # Read at each step: the runtime detects its cgroup backend when it opens.
        self.confinement = confinement or (lambda: None)

    async def resolve(self, reference: str, log: Log) -> Base:
        snapshot = self.snapshots(reference)
        if snapshot is not None:
            log(f"Using snapshot {reference}")
            return snapshot
        try:
            image = await self.importer.import_image(registry_reference(reference), log)
        except ImageError as exc:
            raise BuildError(str(exc)) from None
        return Base(f"image:{image.digest}", (image.layer,), image.config)

    async def build(self, text: str, log: Log, *, context: Path | None = None,
                    target: str | None = None) -> Built:
        """`context`: the directory COPY reads from (an operator's build; API builds have
        none); `target`: the stage to build (docker build --target), by default the last."""
        try:
            instructions = plan(text, has_context=context is not None, target=target)
        except DockerfileError as exc:
            raise BuildError(str(exc)) from None
        started = time.monotonic()
        args: dict[str, str] = {}
        state: _State | None = None
        stages: dict[str, Base] = {}  # the named stages built so far, for a later FROM
        stage: str | None = None
        run = cached = 0
        total = len(instructions)
        for number, instruction in enumerate(instructions, 1):
            log(f"Step {number}/{total} : {instruction.text}")
            try:
                if instruction.keyword == "ARG" and state is None:
                    name, value = dockerfile.arg_pair(instruction, args)
                    args[name] = value or ""
                elif instruction.keyword == "FROM":
                    if state is not None and stage is not None:
                        stages[stage] = _as_base(state)
                    reference, stage = from_reference(instruction, args)
                    if reference.lower() in stages:
                        log(f"Using stage {reference}")
                        base = stages[reference.lower()]
                    else:
                        base = await self.resolve(reference, log)
                    config = base.config
                    state = _State(key=base.key, layers=list(base.layers), env=dict(config.env),
                                   workdir=config.workdir or "/",
                                   user=base.build_user or config.user or "root", final_user=config.user,
                                   entrypoint=config.entrypoint, cmd=config.cmd, global_args=dict(args),
                                   context=context)
                else:
                    assert state is not None  # plan() put FROM first (after ARGs)
                    outcome = await self._apply(instruction, state, log)
                    run += outcome == "run"
                    cached += outcome == "cached"
            except DockerfileError as exc:
                raise BuildError(str(exc)) from None
        assert state is not None
        size = sum(self.store.layer_size(d) for d in state.layers)
        log(f"Built {len(state.layers)} layer(s) in {time.monotonic() - started:.1f} s "
            f"({run} step(s) run, {cached} from cache)")
        return Built(tuple(state.layers), state.env, state.workdir, state.final_user or state.user,
                     state.entrypoint, state.cmd,
                     size, run, cached)

    async def _apply(self, instruction: Instruction, state: _State, log: Log) -> str:
        keyword, variables = instruction.keyword, state.variables()
        if keyword == "ENV":
            state.env.update(dockerfile.env_pairs(instruction, variables))
        elif keyword == "ARG":
            name, value = dockerfile.arg_pair(instruction, variables)
            state.args[name] = value if value is not None else state.global_args.get(name, "")
        elif keyword == "USER":
            user = dockerfile.expand(instruction.value, variables).strip()
            if not user or " " in user:
                raise instruction.fail("needs one user[:group]")
            state.user = user
            state.final_user = None
        elif keyword == "SHELL":
            state.shell = dockerfile.exec_form(instruction.value) or SHELL
        elif keyword in ("ENTRYPOINT", "CMD"):
            argv = dockerfile.command(instruction.value, state.shell)
            if keyword == "ENTRYPOINT":
                state.entrypoint, state.cmd = argv, None  # docker: ENTRYPOINT resets CMD
            else:
                state.cmd = argv
        elif keyword == "WORKDIR":
            return await self._workdir(instruction, state, log)
        elif keyword == "RUN":
            return await self._run(instruction, state, log)
        elif keyword in ("COPY", "ADD"):
            return await self._copy(instruction, state, log)
        # LABEL and EXPOSE are accepted and mean nothing to a snapshot.
        return "config"

    async def _cached(self, key: str) -> tuple[str, ...] | None:
        """The layer stack after the step with this key, if it was built before and its
        layers are still here (the cache's records are weak: runtime/snapshots.py)."""
        return await asyncio.to_thread(self.store.cached_build, f"step-{key}")

    def _advance(self, state: _State, key: str, layers: tuple[str, ...]) -> None:
        state.key = key
        state.layers = list(layers)
        self.store.record_build(f"step-{key}", layers, weak=True)

    async def _workdir(self, instruction: Instruction, state: _State, log: Log) -> str:
        value = dockerfile.expand(" ".join(dockerfile.words(instruction)), state.variables())
        path = PurePosixPath(state.workdir) / value
        if ".." in path.parts:
            raise instruction.fail("a path with '..' is not supported")
        state.workdir = str(path)
        paths = [self.store.layer_path(d) for d in state.layers]
        if str(path) == "/" or await asyncio.to_thread(_lookup, paths, str(path)) is not None:
            return "config"
        key = _key(state.key, "WORKDIR", str(path))
        if (hit := await self._cached(key)) is not None:
            log(" ---> Using cache")
            self._advance(state, key, hit)
            return "cached"
        tree = await asyncio.to_thread(self.store.new_tree)
        try:
            await asyncio.to_thread((tree / str(path).lstrip("/")).mkdir, parents=True, mode=0o755)
            layer = await asyncio.to_thread(self.store.publish_layer, tree)
        finally:
            await asyncio.to_thread(shutil.rmtree, tree, True)
        self._advance(state, key, (*state.layers, layer))
        return "run"

    async def _run(self, instruction: Instruction, state: _State, log: Log) -> str:
        argv = dockerfile.command(instruction.value, state.shell)
        paths = [self.store.layer_path(d) for d in state.layers]
        uid, gid = await asyncio.to_thread(_passwd_ids, paths, state.user)
        # ARGs are seen by RUN as environment variables, ENV wins over ARG (as in docker).
        env = {**state.args, **state.env}
        key = _key(state.key, "RUN", argv, env, state.workdir, uid, gid)
        if (hit := await self._cached(key)) is not None:
            log(" ---> Using cache")
            self._advance(state, key, hit)
            return "cached"
        # The upper and the overlay's work dir on the layers' file system (the upper is
        # renamed in as the layer); a crash leaves them to the store's clean_partial.
        if state.id_base is None:
            try:
                state.id_base = await asyncio.to_thread(self.id_ranges)
            except UidsExhausted as exc:
                raise BuildError(str(exc)) from None
            log(f" ---> Steps run as host ids {state.id_base}-{state.id_base + ID_RANGE - 1}")
        base = state.id_base
        upper = await asyncio.to_thread(self.store.new_tree)
        scratch = await asyncio.to_thread(self.store.new_tree)
        try:
            pending = bytearray()

            def output(chunk: bytes) -> None:
                pending.extend(chunk)
                *lines, rest = pending.split(b"\n")
                for line in lines:
                    log(line.decode(errors="replace"))
                pending[:] = rest

            try:
                status = await run_step(paths, Step(argv, env, state.workdir, uid, gid), upper, scratch,
                                        output, base=base, timeout=self.step_timeout,
                                        confinement=self.confinement())
            except TimeoutError:
                raise BuildError(f"{instruction.text} did not finish in {self.step_timeout:.0f} s") from None
            if pending:
                log(pending.decode(errors="replace"))
            if status != 0:
                raise BuildError(f"The command '{instruction.value}' returned a non-zero code: {status}")
            layer = await asyncio.to_thread(self._publish, upper, base)
        finally:
            for tree in (upper, scratch):
                await asyncio.to_thread(shutil.rmtree, tree, True)
        self._advance(state, key, (*state.layers, layer) if layer else tuple(state.layers))
        return "run"

    async def _copy(self, instruction: Instruction, state: _State, log: Log) -> str:
        assert state.context is not None  # plan() refused COPY without a context
        names, destination = dockerfile.copy_sources(instruction)
        if instruction.keyword == "ADD" and any("://" in n or n.endswith((".tar", ".gz", ".tgz", ".xz"))
                                                for n in names):
            raise instruction.fail("ADD of URLs and archives is not supported: use COPY and RUN")
        try:
            sources = [context.source_path(state.context, dockerfile.expand(n, state.variables())) for n in names]
            content = await asyncio.to_thread(context.digest, sources)
        except context.ContextError as exc:
            raise instruction.fail(str(exc)) from None
        key = _key(state.key, "COPY", content, destination, state.workdir)
        if (hit := await self._cached(key)) is not None:
            log(" ---> Using cache")
            self._advance(state, key, hit)
            return "cached"
        tree = await asyncio.to_thread(self.store.new_tree)
        try:
            await asyncio.to_thread(context.copy_into, tree, sources, destination, state.workdir)
            layer = await asyncio.to_thread(self.store.publish_layer, tree)
        except context.ContextError as exc:
            raise instruction.fail(str(exc)) from None
        finally:
            await asyncio.to_thread(shutil.rmtree, tree, True)
        self._advance(state, key, (*state.layers, layer))
        return "run"

    def _publish(self, upper: Path, base: int) -> str | None:
        if publish.is_empty(upper):
            return None
        publish.shift_ids(upper, base, ID_RANGE)
        return self.store.publish_layer(upper)
