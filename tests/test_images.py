"""images/: no container engine runs here, so check what can be checked without one.

- the compose file against the Compose Specification's JSON schema (as vendored by
  check-jsonschema), the Kubernetes manifests against Kubernetes' own schemas (as shipped
  by kubernetes-validate), strictly (unknown fields fail);
- every command line in them, and the images' entrypoints, parsed by the real CLI parsers
  of `python -m toolbox` and `python -m proxy`;
- ports, names and labels agree across Dockerfiles, compose, Services and the proxy's
  template: registry.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

IMAGES = Path(__file__).resolve().parent.parent / "images"
REPO = IMAGES.parent


def dockerfile(name: str) -> dict[str, list[str]]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    text = (IMAGES / name / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.setdefault(keyword.upper(), []).append(rest.strip())
    return out


def entrypoint(name: str) -> list[str]:
    (value,) = dockerfile(name)["ENTRYPOINT"]
    argv = json.loads(value)  # exec form: no shell, signals reach the daemon
    assert isinstance(argv, list)
    return argv


def module_args(argv: list[str], module: str) -> list[str]:
    index = argv.index("-m")
    assert argv[index + 1] == module, argv
    return argv[index + 2:]


def toolbox_args(argv: list[str]) -> Any:
    from toolbox.cli import build_parser

    return build_parser().parse_args(argv)


def proxy_args(argv: list[str]) -> Any:
    from proxy.cli import build_parser

    return build_parser().parse_args(argv)


def compose() -> dict[str, Any]:
    return yaml.safe_load((IMAGES / "compose.yaml").read_text())


def k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((IMAGES / "k8s" / name).read_text()) if d]


# ---- Dockerfiles -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sandbox", "proxy"])
def test_dockerfiles_copy_only_what_exists_and_run_unprivileged(name: str) -> None:
    instructions = dockerfile(name)
    # Stages build on the project's local base or on an earlier stage, never on another image.
    stages = [f.split()[-1] for f in instructions["FROM"] if " AS " in f.upper()]
    assert all(f.split()[0] in ("debian:bookworm-slim", *stages) for f in instructions["FROM"])
    for copy in instructions["COPY"]:
        *sources, _ = shlex.split(copy)
        for source in sources:
            assert (REPO / source).exists(), f"{name}: COPY {source} is not in the repository"
    assert instructions["USER"][-1] not in ("root", "0")  # what the image runs as
    ignore = (IMAGES / name / "Dockerfile.dockerignore").read_text()
    assert "!toolbox/" in ignore and "!pyproject.toml" in ignore


def test_sandbox_image_runs_the_daemon_as_pid_1_as_a_user_whose_home_is_the_work_dir() -> None:
    instructions = dockerfile("sandbox")
    argv = entrypoint("sandbox")
    assert argv[0].endswith("python") and argv[1:3] == ["-m", "toolbox"]
    args = toolbox_args(module_args(argv, "toolbox"))
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 2280)
    assert instructions["EXPOSE"] == ["2280"]
    (workdir,) = instructions["WORKDIR"]
    assert args.workdir == workdir == "/home/daytona"
    assert any("--home-dir /home/daytona" in run and "daytona" in run for run in instructions["RUN"])
    assert instructions["USER"][-1] == "daytona"
    installed = " ".join(instructions["RUN"])
    for tool in ("python3", "git", "nodejs", "npm", "curl"):
        assert f" {tool} " in f" {installed} ", tool
    assert any("TOOLBOX_TERMINAL_PORT=22222" in env for env in instructions["ENV"])


def test_proxy_image_entrypoint_is_the_documented_cli() -> None:
    args = proxy_args(module_args(entrypoint("proxy"), "proxy") + ["--domain", "d", "--registry", "file:/x"])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8080)
    assert dockerfile("proxy")["EXPOSE"] == ["8080"]


# ---- compose -----------------------------------------------------------------------------

def compose_schema() -> dict[str, Any]:
    pytest.importorskip("check_jsonschema")
    path = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def test_compose_file_validates_against_the_compose_specification() -> None:
    import jsonschema  # type: ignore[import-untyped]  # no stubs; a test-only dependency

    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # The schema really is strict: a misspelt key fails.
    broken = compose()
    broken["services"]["proxy"]["portz"] = ["1:1"]
    assert list(validator.iter_errors(broken))


def test_compose_runs_a_proxy_and_two_sandboxes_the_template_registry_can_reach() -> None:
    services = compose()["services"]
    networks = compose()["networks"]
    assert networks["sandboxes"]["internal"] is True  # no egress for sandboxes
    proxy = services["proxy"]
    args = proxy_args(module_args(entrypoint("proxy"), "proxy") + proxy["command"])
    assert args.registry.startswith("template:")
    template = args.registry[len("template:"):]
    published = [p for p in proxy["ports"] if p.endswith(f":{args.port}")]
    assert published, "the proxy's --port is published"
    assert set(proxy["networks"]) == {"edge", "sandboxes"}

    sandboxes = {name: s for name, s in services.items() if name != "proxy"}
    assert len(sandboxes) == 2
    sandbox_port = toolbox_args(module_args(entrypoint("sandbox"), "toolbox")).port
    for name, service in sandboxes.items():
        assert service["networks"] == ["sandboxes"] and "ports" not in service
        daemon = toolbox_args(module_args(entrypoint("sandbox"), "toolbox") + service["command"])
        # The proxy resolves sandbox {id} to this very container by its service name.
        target = urlsplit(template.replace("{id}", daemon.sandbox_id))
        assert target.hostname == name and target.port == sandbox_port
        assert service["cpus"] == 1 and service["mem_limit"] == "1g" and service["pids_limit"] > 0

    from proxy.registry import open_registry

    open_registry(args.registry)  # the proxy accepts the registry spec


# ---- Kubernetes --------------------------------------------------------------------------

MANIFESTS = ["namespace.yaml", "proxy.yaml", "sandbox-template.yaml", "network-policy.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_kubernetes_schemas(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for document in k8s(name):
        kubernetes_validate.validate(document, "1.30", strict=True)


def _by_kind(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in k8s(name)}


def test_proxy_deployment_reaches_sandbox_services_through_cluster_dns() -> None:
    proxy = _by_kind("proxy.yaml")
    sandbox = _by_kind("sandbox-template.yaml")
    deployment, proxy_service = proxy["Deployment"], proxy["Service"]
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert proxy_service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    args = proxy_args(module_args(entrypoint("proxy"), "proxy") + container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[proxy_service["spec"]["ports"][0]["targetPort"]] == args.port
    env = {e["name"] for e in container["env"]}
    assert {"PROXY_API_KEYS", "PROXY_SECRET"} <= env
    assert pod_spec["securityContext"]["runAsUser"] == 10001  # the proxy image's user

    pod, service = sandbox["Pod"], sandbox["Service"]
    (toolbox,) = pod["spec"]["containers"]
    daemon = toolbox_args(module_args(entrypoint("sandbox"), "toolbox") + toolbox["args"])
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    template = urlsplit(args.registry[len("template:"):].replace("{id}", daemon.sandbox_id))
    assert template.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    (service_port,) = service["spec"]["ports"]
    assert template.port == service_port["port"]
    container_ports = {p["name"]: p["containerPort"] for p in toolbox["ports"]}
    assert container_ports[service_port["targetPort"]] == daemon.port
    assert toolbox["readinessProbe"]["httpGet"]["path"] == "/version"
    limits = toolbox["resources"]["limits"]
    assert (limits["cpu"], limits["memory"]) == ("1", "1Gi")


def test_network_policy_isolates_sandboxes_and_admits_only_the_proxy() -> None:
    policy = _by_kind("network-policy.yaml")["NetworkPolicy"]
    pod = _by_kind("sandbox-template.yaml")["Pod"]
    proxy_labels = _by_kind("proxy.yaml")["Deployment"]["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["egress"] == [] and set(spec["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "sandbox-proxy"


def test_the_files_the_images_copy_build_a_wheel_with_the_terminal_assets(tmp_path: Path) -> None:
    """What `pip install /opt/toolbox-src` does in both images, from exactly the COPY set."""
    import shutil
    import subprocess
    import sys
    import zipfile

    context = tmp_path / "src"
    context.mkdir()
    for copy in dockerfile("sandbox")["COPY"]:
        *sources, _ = shlex.split(copy)
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, context / source)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "out"),
                             str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("toolbox/cli.py", "proxy/cli.py", "runtime/entry.py", "toolbox/terminal/static/index.html",
                   "toolbox/terminal/static/terminal.js", "toolbox/terminal/static/vendor/xterm.js",
                   "toolbox/terminal/static/vendor/xterm.css", "toolbox/terminal/static/vendor/addon-fit.js",
                   "toolbox/terminal/static/vendor/LICENSE.xterm.txt"):
        assert needed in names, needed


# ---- the images' names: what `python -m runtime image push` pushes -------------------------

def test_compose_and_kubernetes_run_the_images_the_builder_pushes() -> None:
    from runtime.imagecli import DEFAULT_REGISTRY, IMAGES, REPOSITORY

    services = compose()["services"]
    wanted = {name: f"${{REGISTRY:-{DEFAULT_REGISTRY}}}/{REPOSITORY}/{name}:latest" for name in IMAGES}
    assert services["proxy"]["image"] == wanted["proxy"]
    assert all(s["image"] == wanted["sandbox"] for n, s in services.items() if n != "proxy")
    assert not any("build" in s for s in services.values())  # never another build than the pushed one
    (proxy,) = _by_kind("proxy.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"]
    (sandbox,) = _by_kind("sandbox-template.yaml")["Pod"]["spec"]["containers"]
    for container, name in ((proxy, "proxy"), (sandbox, "sandbox")):
        registry, _, path = container["image"].partition("/")
        assert "." in registry and path == f"{REPOSITORY}/{name}:latest", container["image"]
        assert container["imagePullPolicy"] == "Always"
