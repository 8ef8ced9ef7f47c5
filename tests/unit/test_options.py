"""The option table (server/options.py) against everything read from it: the parsers of
`easel serve` / `easel worker`, Settings, EngineConfig, ClusterConfig, Limits and README.md.

Table-driven: a new option is checked by every test here once it has a row in EXAMPLES.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import EngineConfig
from server.cli import build_parser, cluster_config, engine_config, settings_from_args
from server.cluster.config import ClusterConfig
from server.limits import Limits
from server.options import OPTIONS, SERVE, WORKER, Option, To, by_flag, options_for
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BROKER = "redis://redis.example:6379/0"

# For each option: a text for its variable and another for its flag (not the default).
EXAMPLES: dict[str, tuple[str, str]] = {
    "--host": ("0.0.0.0", "10.0.0.2"),
    "--port": ("8000", "8001"),
    "--data-dir": ("/srv/easel", "/tmp/easel"),
    "--models-dir": ("/srv/models", "/tmp/models"),
    "--keys-file": ("/srv/keys.json", "/tmp/keys.json"),
    "--public-url": ("https://easel.example.com", "https://other.example.com"),
    "--insecure": ("1", ""),
    "--allow-pickle": ("yes", ""),
    "--max-queue": ("32", "128"),
    "--shutdown-grace-s": ("5", "7.5"),
    "--devices": ("cuda:0, cuda:1", "cuda:2"),
    "--max-batch-images": ("8", "4"),
    "--batch-window-ms": ("25", "2.5"),
    "--dtype": ("bf16", "fp32"),
    "--compile": ("on", ""),
    "--preload": ("none", "sdxl,default"),
    "--broker": ("redis://a.example:6379/1", BROKER),
    "--retention-hours": ("1", "0.5"),
    "--allow-url-net": ("10.0.0.0/8, 192.168.1.7", "::1"),
    "--max-body-mb": ("1.5", "2"),
    "--max-image-mb": ("3", "4"),
    "--max-image-megapixels": ("2048x1024", "8"),
    "--max-request-megapixels": ("8", "1024x1024"),
    "--max-prompt-chars": ("500", "600"),
    "--ws-max-frame-mb": ("4", "5"),
    "--ws-messages-per-s": ("2.5", "3"),
    "--ws-burst": ("7", "9"),
    "--log-json": ("true", ""),
    "--log-level": ("debug", "warning"),
    "--concurrency": ("4", "8"),
    "--name": ("gpu-a", "gpu-b"),
    "--visibility-timeout": ("600", "900"),
    "--restore-interval": ("5", "3"),
    "--heartbeat": ("1", "0.5"),
    "--metrics-port": ("9100", "9101"),
}

CASES = [
    (command, option) for option in OPTIONS for command in option.commands if command != "models"
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No EASEL_* variable, and a working directory without a keys file."""
    for name in list(os.environ):
        if name.startswith("EASEL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _argv(command: str, flags: list[str]) -> list[str]:
    """The command line; a worker gets the broker it needs unless the test gives one."""
    needs_broker = (
        command == WORKER and "--broker" not in flags and "EASEL_BROKER" not in os.environ
    )
    return [command, *flags, *(["--broker", BROKER] if needs_broker else [])]


def _flags(option: Option, text: str) -> list[str]:
    return [option.flag] if option.kind == "switch" else [option.flag, text]


def _expected(option: Option, text: str) -> Any:
    if option.kind == "switch":
        return True
    if option.kind == "list":
        return tuple(option.parse(item) for item in text.split(","))
    return option.parse(text)


def _landed(option: Option, args: argparse.Namespace) -> Any:
    """The value where the table says the option goes."""
    if option.to in (To.SETTINGS, To.ENGINE):
        return getattr(settings_from_args(args), option.field)
    if option.to is To.LIMITS:
        return getattr(settings_from_args(args).limits, option.field)
    if option.to is To.CLUSTER:
        return getattr(cluster_config(args), option.field)
    return getattr(args, option.dest)


def test_every_option_has_an_example() -> None:
    assert set(EXAMPLES) == {option.flag for option in OPTIONS}


@pytest.mark.parametrize(("command", "option"), CASES, ids=lambda case: getattr(case, "flag", case))
def test_each_variable_sets_its_option_and_the_flag_wins(
    command: str, option: Option, clean_env: pytest.MonkeyPatch
) -> None:
    env_text, flag_text = EXAMPLES[option.flag]
    if not (command == WORKER and option.flag == "--broker"):  # _argv gives the worker one
        assert _landed(option, build_parser().parse_args(_argv(command, []))) == option.default
    clean_env.setenv(option.env, env_text)
    from_env = build_parser().parse_args(_argv(command, []))
    assert _landed(option, from_env) == _expected(option, env_text)
    if option.kind == "switch":  # the flag turns on what the variable leaves off
        clean_env.setenv(option.env, "0")
    from_flag = build_parser().parse_args(_argv(command, _flags(option, flag_text)))
    assert _landed(option, from_flag) == _expected(option, flag_text)


def test_defaults_reach_settings_engine_and_cluster_config(clean_env: pytest.MonkeyPatch) -> None:
    """With nothing set, `easel serve` runs on Settings' own defaults, and the engine and the
    cluster on their classes' defaults: each written once, read by the table."""
    serve = build_parser().parse_args(["serve"])
    assert settings_from_args(serve) == Settings()
    # A preload is the one difference: an engine built in code preloads nothing.
    assert engine_config(Settings()) == EngineConfig(preload=("",))
    worker = build_parser().parse_args(["worker", "--broker", BROKER])
    assert cluster_config(worker) == ClusterConfig(broker_url=BROKER)
    assert settings_from_args(worker).limits == Limits()


def test_fields_named_by_the_table_exist() -> None:
    settings = {field.name for field in dataclasses.fields(Settings)} - {"limits"}
    assert settings == {o.field for o in OPTIONS if o.to in (To.SETTINGS, To.ENGINE)}
    limits = {field.name for field in dataclasses.fields(Limits)}
    assert limits == {o.field for o in OPTIONS if o.to is To.LIMITS}
    cluster = {field.name for field in dataclasses.fields(ClusterConfig)}
    assert {o.field for o in OPTIONS if o.to is To.CLUSTER} <= cluster
    engine = {field.name for field in dataclasses.fields(EngineConfig)}
    # Each engine option reaches EngineConfig (under its own name but for the window in ms).
    names = {"batch_window_ms": "batch_window"}
    assert {names.get(o.field, o.field) for o in OPTIONS if o.to is To.ENGINE} <= engine


def test_flags_and_variables_are_unique_and_named_alike() -> None:
    flags = [option.flag for option in OPTIONS]
    variables = [option.env for option in OPTIONS]
    assert len(set(flags)) == len(flags) and len(set(variables)) == len(variables)
    assert all(name.startswith("EASEL_") and name.isupper() for name in variables)
    for command in (SERVE, WORKER):
        assert options_for(command), command


def test_help_names_every_variable_and_default(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("COLUMNS", "1000")  # one line per option
    for command in (SERVE, WORKER):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        for option in options_for(command):
            assert f"({option.env_usage}; default: {option.shown_default})" in text


def test_a_bad_variable_is_refused_like_a_bad_flag(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("EASEL_PORT", "eighty")
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve"])
    assert exit_.value.code == 2
    assert "argument --port: invalid int value: 'eighty'" in capsys.readouterr().err
    build_parser().parse_args(["worker", "--broker", BROKER])  # the worker has no --port


def test_a_variable_outside_the_choices_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EASEL_DTYPE", "fp8")
    args = build_parser().parse_args(["serve"])
    with pytest.raises(ValueError, match="EASEL_DTYPE: 'fp8' is not one of auto, fp16, bf16, fp32"):
        settings_from_args(args)


def test_the_worker_needs_a_broker_from_its_flag_or_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker"])
    assert "the following arguments are required: --broker" in capsys.readouterr().err
    clean_env.setenv("EASEL_BROKER", BROKER)
    assert build_parser().parse_args(["worker"]).broker == BROKER
    assert by_flag("--broker").required_by == (WORKER,)


def test_readme_option_tables_are_generated_from_the_table() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_options.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr  # names the command that regenerates them


def test_the_cli_imports_no_torch() -> None:
    """`easel --help` and the option table stay quick: the engine loads only to run it."""
    code = "import sys, server.cli; print([m for m in ('torch', 'diffusers') if m in sys.modules])"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert found.stdout.strip() == "[]"
