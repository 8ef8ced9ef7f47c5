"""The deployment files (compose.yaml, Dockerfile.cuda) against easel's own CLI.

Nobody runs Docker in the suite, so these files would rot silently: every command they give is
parsed here by the real `easel` parser, under the environment the file sets, and every EASEL_*
variable they name must be one the CLI documents.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dependency of transformers and huggingface_hub

from server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile.cuda"
BROKER = "redis://redis:6379/0"
# EASEL_* names that are compose's own interpolation variables, not easel options.
COMPOSE_ONLY = {"EASEL_MODELS_HOST_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The parser reads EASEL_* defaults when it is built: start from none of them."""
    for name in list(os.environ):
        if name.startswith("EASEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")  # one help line per option: names are never wrapped
    return monkeypatch


def _parse(service: dict[str, Any], env: pytest.MonkeyPatch) -> Any:
    """The service's command as `easel` parses it inside the container, with its environment."""
    for name, value in (service.get("environment") or {}).items():
        env.setenv(name, str(value))
    return build_parser().parse_args(service["command"])


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


def _dockerfile_instruction(name: str) -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"one {name} in {DOCKERFILE.name}"
    return json.loads(lines[0][len(name) :])


def test_compose_runs_redis_an_api_replica_and_a_worker(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "api", "worker"}


def test_redis_persists_and_reports_health(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_api_command_parses_as_a_replica_of_the_compose_redis(
    services: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    args = _parse(services["api"], clean_env)
    assert args.command == "serve"
    assert args.broker == BROKER
    assert args.host == "0.0.0.0"
    assert args.port == 7860
    assert "7860:7860" in services["api"]["ports"]


def test_api_has_keys_or_says_it_runs_open(
    compose: dict[str, Any], services: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    """A replica on 0.0.0.0 refuses to start without keys: the keys file must come from the
    secret the file declares (or the service must opt in to an open server)."""
    api = services["api"]
    args = _parse(api, clean_env)
    if args.insecure:
        return
    (secret,) = api["secrets"]
    assert str(args.keys_file) == f"/run/secrets/{secret}"
    assert "file" in compose["secrets"][secret]


def test_worker_command_parses_as_a_worker_of_the_compose_redis(
    services: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    args = _parse(services["worker"], clean_env)
    assert args.command == "worker"
    assert args.broker == BROKER
    assert args.concurrency == int(services["worker"]["environment"]["EASEL_WORKER_CONCURRENCY"])


def test_both_roles_run_the_one_image(services: dict[str, Any]) -> None:
    api, worker = services["api"], services["worker"]
    assert api["image"] == worker["image"]
    for service in (api, worker):
        assert service["build"]["dockerfile"] == DOCKERFILE.name
        assert service["build"]["context"] == "."


def test_worker_reserves_the_gpus_and_skips_the_http_health_check(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert worker["healthcheck"] == {"disable": True}  # the image's check curls /healthz
    assert "ports" not in worker  # so that --scale worker=N never collides


def test_api_and_worker_read_the_same_models_read_only(services: dict[str, Any]) -> None:
    found = re.search(r"^\s*EASEL_MODELS_DIR=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert found is not None, "the image sets EASEL_MODELS_DIR"
    image_models_dir = found.group(1)
    mounts = []
    for name in ("api", "worker"):
        (mount,) = [v for v in services[name]["volumes"] if ":/models" in v]
        source, target, mode = mount.rsplit(":", 2)
        assert (target, mode) == (image_models_dir, "ro")
        mounts.append(source)
    assert mounts[0] == mounts[1]


def test_api_and_worker_wait_for_a_healthy_redis(services: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_dockerfile_serves_by_default_through_the_easel_entrypoint() -> None:
    assert _dockerfile_instruction("ENTRYPOINT") == ["easel"]
    assert _dockerfile_instruction("CMD") == ["serve"]


def test_dockerfile_worker_example_parses(clean_env: pytest.MonkeyPatch) -> None:
    """The header's `docker run ... easel worker ...` example is a command the CLI accepts."""
    header = "\n".join(
        line.lstrip("# ") for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")
    ).replace("\\\n", " ")
    (example,) = [line for line in header.splitlines() if " worker --broker " in line]
    words = shlex.split(example.split("[", 1)[0])  # drop the optional [--flags]
    argv = words[words.index("easel", words.index("run")) + 1 :]
    args = build_parser().parse_args(argv)
    assert args.command == "worker" and args.broker.startswith("redis://")


def test_readme_scaling_out_commands_parse(clean_env: pytest.MonkeyPatch) -> None:
    """README.md's "Scaling out" example: one replica and one worker command, both accepted."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Scaling out\n", 1)[1].split("\n## ", 1)[0]
    lines = section.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("easel ")]
    assert sorted(argv[0] for argv in commands) == ["serve", "worker"]
    for argv in commands:
        assert build_parser().parse_args(argv).broker.startswith("redis://")


def test_every_easel_variable_named_is_a_real_option(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Comments and settings alike: a misspelt variable would be silently ignored."""
    documented = _help("serve", capsys) + _help("worker", capsys)
    for path in (COMPOSE, DOCKERFILE):
        text = re.sub(r"\$\{[^}]*\}", "", path.read_text())  # compose's own variables
        names = set(re.findall(r"\bEASEL_[A-Z_]+\b", text)) - COMPOSE_ONLY
        assert names, path.name
        unknown = {name for name in names if not re.search(rf"\b{name}\b", documented)}
        assert not unknown, f"{path.name} names variables easel does not read: {unknown}"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_docker_compose_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose here; the YAML checks above still ran")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
