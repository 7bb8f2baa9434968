"""`python -m runtime image build|push [sandbox] [proxy]`: the project's own images, built
by this project's builder (no container engine) and pushed to an OCI registry.

Each image is `images/<name>/Dockerfile` with the repository as its context (what its
`Dockerfile.dockerignore` keeps, as BuildKit sends it: runtime/images/dockerignore.py), built through
`runtime.rootfs.local_builder`: `FROM debian:bookworm-slim` is the Debian made here with
debootstrap, RUN steps run in build sandboxes on a sandbox network of their own, and the
layers go to the runtime's layers dir, so the sandbox image's `base` stage is the default
snapshot's build (a cache hit once the runtime has started) and an unchanged rebuild runs
nothing. The build log is printed as it goes; then, with `--push` (or `push`), the image is
exported (runtime/images/export.py) and copied to
`${REGISTRY:-localhost:5000}/sandbox-toolbox/<name>:latest`, or to `--tag REF`.

The last build of each image is recorded strongly in the layers dir (`project-image-<name>`),
so a runtime's layer collection keeps it and the next build starts from it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.codemount import REPO_ROOT
from toolbox.options import env

if TYPE_CHECKING:
    from runtime.images.builder import Builder
    from runtime.snapshots import SnapshotStore

Say = Callable[[str], None]

IMAGES = ("sandbox", "proxy")
DEFAULT_REGISTRY = "localhost:5000"
REPOSITORY = "sandbox-toolbox"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               state_arg: Callable[..., None], formatter: type[argparse.HelpFormatter]) -> None:
    image = commands.add_parser("image", help="build the project's sandbox and proxy images (no container engine) "
                                              "and push them to an OCI registry")
    verbs = image.add_subparsers(dest="image_command", required=True)
    for verb, text in (("build", "build images/NAME/Dockerfile; with --push also push it"),
                       ("push", "build (a cache hit when unchanged) and push: the same as build --push")):
        parser = verbs.add_parser(verb, help=text, formatter_class=formatter,
                                  description=f"{text}. Needs root (build sandboxes: user namespaces, idmapped "
                                              "layers, a sandbox network).")
        state_arg(parser, top=False)
        parser.add_argument("names", nargs="*", metavar="NAME", default=[],
                            help=f"which images: {', '.join(IMAGES)} (default: both)")
        if verb == "build":
            parser.add_argument("--push", action="store_true", help="push each image once it is built")
        parser.add_argument("--registry", default=env("REGISTRY", DEFAULT_REGISTRY),
                            help=f"registry to push to, as {REPOSITORY}/NAME:latest (env REGISTRY; plain HTTP "
                                 "only to localhost/127.0.0.1)")
        parser.add_argument("--tag", metavar="REF", help="the full reference to push to instead (one image only)")
        parser.add_argument("--target", help="stop after this stage of the Dockerfile (one image only)")
        parser.add_argument("--oci", metavar="DIR", help="also write each image as an OCI layout DIR/NAME, tag latest")
        parser.add_argument("--layers-dir", default=env("RUNTIME_LAYERS_DIR"),
                            help="the runtime's layers dir (env RUNTIME_LAYERS_DIR; default STATE/layers)")


@dataclass(frozen=True)
class _Job:
    name: str
    reference: str | None  # where to push it, None: build only


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _jobs(args: argparse.Namespace) -> list[_Job] | str:
    """What to build and where to push, or why the arguments do not say (usage)."""
    from runtime.images.export import push_reference
    from runtime.images.oci import ImageError

    names = list(dict.fromkeys(args.names)) or list(IMAGES)
    unknown = [name for name in names if name not in IMAGES]
    if unknown:
        return f"no image {unknown[0]!r}: the images are {', '.join(IMAGES)} (images/NAME/Dockerfile)"
    pushing = args.image_command == "push" or args.push
    if len(names) > 1 and (args.tag or args.target):
        return "--tag and --target name one image: give one NAME"
    if args.tag and not pushing:
        return "--tag is where to push: use it with --push (or `image push`)"
    jobs = []
    for name in names:
        reference = args.tag or f"{args.registry.rstrip('/')}/{REPOSITORY}/{name}:latest"
        if pushing:
            try:
                push_reference(reference)  # before anything is built
            except ImageError as exc:
                return str(exc)
        jobs.append(_Job(name, reference if pushing else None))
    return jobs


def _stage_context(dockerfile: Path, dest: Path) -> int:
    """The repository as docker would send it (`<Dockerfile>.dockerignore`, BuildKit's
    rule), copied into `dest`: no `__pycache__` or `node_modules` in the image's layers, and
    the COPY steps' cache keys do not change with them."""
    from runtime.images import dockerignore

    ignore = dockerfile.with_name(f"{dockerfile.name}.dockerignore")
    patterns = dockerignore.parse(ignore.read_text()) if ignore.is_file() else []
    return dockerignore.stage(REPO_ROOT, patterns, dest)


def _created() -> str:
    """The image config's `created`: SOURCE_DATE_EPOCH (reproducible builds: the same
    layers then push as the same manifest digest), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def run(args: argparse.Namespace, state_dir: Path) -> int:
    jobs = _jobs(args)
    if isinstance(jobs, str):
        return _fail(jobs, 2)
    if os.geteuid() != 0:
        return _fail("building images needs root: RUN steps run in build sandboxes (a user namespace with "
                     "idmapped layers, a host uid range of their own, a sandbox network with nftables). "
                     "Run it as root, e.g. sudo .venv/bin/python -m runtime image ...")
    missing = [tool for tool in ("skopeo",) if any(j.reference for j in jobs) and shutil.which(tool) is None]
    if missing:
        return _fail(f"pushing needs {', '.join(missing)} (apt-get install skopeo)")
    from runtime.images.builder import BuildError
    from runtime.images.oci import ImageError
    from runtime.rootfs import local_builder
    from runtime.snapshots import SnapshotError, SnapshotStore

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        store = SnapshotStore(state_dir, Path(args.layers_dir) if args.layers_dir else None)
        store.clean_partial()
        # Every layer this process finds or makes stays until it is done (the store's holds).
        with store.holding(), local_builder(store, say) as builder:
            return asyncio.run(_build_all(store, builder, jobs, args, say))
    except (BuildError, ImageError, SnapshotError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")


async def _build_all(store: SnapshotStore, builder: Builder, jobs: list[_Job], args: argparse.Namespace,
                     say: Say) -> int:
    from runtime.images.export import export_layout, push
    from runtime.images.oci import ImageConfig

    summary = []
    for job in jobs:
        dockerfile = REPO_ROOT / "images" / job.name / "Dockerfile"
        text = await asyncio.to_thread(dockerfile.read_text)
        say(f"==> {job.name}: {dockerfile.relative_to(REPO_ROOT)} (context: {REPO_ROOT})")
        started = time.monotonic()
        context = await asyncio.to_thread(store.new_tree)  # a crash leaves it to clean_partial
        try:
            count = await asyncio.to_thread(_stage_context, dockerfile, context)
            say(f"Context: {count} files of the repository, as {dockerfile.name}.dockerignore keeps them")
            built = await builder.build(text, say, context=context, target=args.target)
        finally:
            await asyncio.to_thread(shutil.rmtree, context, True)
        took = time.monotonic() - started
        line = (f"{job.name}: built in {took:.1f} s, {len(built.layers)} layer(s), {built.size / 1e6:.0f} MB "
                f"({built.steps_run} step(s) run, {built.steps_cached} from cache)")
        config = ImageConfig(env=built.env, workdir=built.workdir, user=built.user,
                             entrypoint=built.entrypoint, cmd=built.cmd)
        await asyncio.to_thread(functools.partial(store.record_build, f"project-image-{job.name}", built.layers,
                                                  config=config.to_json()))
        created = _created()
        if args.oci:
            layout = Path(args.oci) / job.name
            if await asyncio.to_thread(layout.exists):
                await asyncio.to_thread(shutil.rmtree, layout)
            started = time.monotonic()
            exported = await export_layout(store, built.layers, config, layout, "latest", created=created, log=say)
            line += (f"; OCI layout {layout} ({exported.size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")
        if job.reference is not None:
            started = time.monotonic()
            pushed = await push(store, built.layers, config, job.reference, say, created=created)
            line += f"; pushed {pushed.reference}@{pushed.digest} in {time.monotonic() - started:.1f} s"
        say(line)
        summary.append(line)
    if len(summary) > 1:
        say("\n".join(["==> done", *summary]))
    return 0
