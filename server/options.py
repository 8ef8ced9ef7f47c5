"""Every option of `easel serve` and `easel worker` (and the storage options of `easel models`),
each defined once, in OPTIONS: its flag, EASEL_* variable, parser, default, help, the commands
that take it and where its value goes. The argparse parsers (server/cli.py), Settings' defaults
(server/settings.py) and the README's option table (scripts/readme_options.py) are all read
from it; tests/unit/test_options.py checks that they agree.

A value comes from the flag, else from its variable (an empty one counts as unset), else from
the default. The variable's text goes through the same parser as the flag's, so a bad one is
refused the same way.

Where defaults are written: an option whose value ends in a configuration class of its own
(EngineConfig, ClusterConfig, Limits) takes its default from that class, because those classes
are built without the CLI too (tests, benchmarks) and pipelines/ cannot import server/: each
default is still written once, next to the field that uses it. EngineConfig lives in the
torch-free pipelines/config.py for this, so that importing this module (and so `easel --help`)
never imports torch. Every other option's default is written here.

To add an option: add a row (in the order --help and the README list them), add its field where
`to` says (a Settings field takes its default from SETTINGS_DEFAULTS), pass it on where the value
is used, and run `python scripts/readme_options.py` to regenerate the README's table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pipelines.config import EngineConfig
from server import option_parsers as parse
from server.cluster.config import ClusterConfig
from server.limits import Limits

SERVE = "serve"
WORKER = "worker"
MODELS = "models"  # `easel models` takes the storage options
BOTH = (SERVE, WORKER)
STORAGE = (SERVE, WORKER, MODELS)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})  # a switch's variable that turns it on


class To(Enum):
    """Where an option's value goes (`Option.field` names the attribute there)."""

    SETTINGS = "Settings"  # server.settings.Settings.<field>
    ENGINE = "EngineConfig"  # Settings.<field>, which open_engine passes on to EngineConfig
    CLUSTER = "ClusterConfig"  # server.cluster.config.ClusterConfig.<field> (cluster_config)
    LIMITS = "Limits"  # Settings.limits.<field> (server.limits.Limits)
    COMMAND = "command"  # read from the parsed arguments by the command itself


Kind = Literal[
    "value",  # --flag VALUE
    "switch",  # --flag alone turns it on; its variable is on when 1, true, yes or on
    "list",  # --flag VALUE, repeatable; its variable holds the values comma-separated
]


@dataclass(frozen=True)
class Option:
    flag: str  # "--max-queue"
    env: str  # "EASEL_MAX_QUEUE"
    to: To
    field: str  # the attribute it sets where `to` says
    commands: tuple[str, ...]  # the `easel` commands that take it
    default: Any  # the value (as `parse` returns it) when neither flag nor variable is given
    help: str  # what it does, for --help and the README
    parse: Callable[[str], Any] = str  # the flag's or the variable's text -> the value
    kind: Kind = "value"
    shown: str = ""  # the default as --help and the README write it; "": from `default`
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    required_by: tuple[str, ...] = ()  # commands that fail without it (flag or variable)

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments (argparse's name for the flag)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def shown_default(self) -> str:
        if self.shown:
            return self.shown
        if self.kind == "switch":
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return "none" if self.default is None else str(self.default)

    @property
    def env_usage(self) -> str:
        """The variable as an operator writes it."""
        if self.kind == "switch":
            return f"{self.env}=1"
        if self.kind == "list":
            return f"{self.env} (comma-separated)"
        return self.env

    @property
    def cli_help(self) -> str:
        return f"{self.help} ({self.env_usage}; default: {self.shown_default})"


_ENGINE = EngineConfig()
_LIMITS = Limits()

OPTIONS: tuple[Option, ...] = (
    # --- the server ---
    Option(
        "--host",
        "EASEL_HOST",
        To.SETTINGS,
        "host",
        (SERVE,),
        "127.0.0.1",
        "the address to listen on; off loopback, API keys (or `--insecure`) are required",
    ),
    Option("--port", "EASEL_PORT", To.SETTINGS, "port", (SERVE,), 7860, "the port", int),
    Option(
        "--data-dir",
        "EASEL_DATA_DIR",
        To.SETTINGS,
        "data_dir",
        STORAGE,
        Path("easel-data"),
        "task store, result images and the demo set",
        Path,
        shown="./easel-data",
    ),
    Option(
        "--models-dir",
        "EASEL_MODELS_DIR",
        To.SETTINGS,
        "models_dir",
        STORAGE,
        None,
        "checkpoints, LoRAs, embeddings, ControlNets..., in A1111 / ComfyUI style folders",
        Path,
        shown="DATA_DIR/models",
    ),
    Option(
        "--keys-file",
        "EASEL_KEYS_FILE",
        To.SETTINGS,
        "keys_file",
        (SERVE,),
        None,
        "API keys, as `easel keys` writes them",
        Path,
        shown="`DATA_DIR/keys.json` if `easel keys` made one; else none: an open server, "
        "loopback only",
    ),
    Option(
        "--public-url",
        "EASEL_PUBLIC_URL",
        To.SETTINGS,
        "public_url",
        (SERVE,),
        None,
        "the base of result image URLs (set it behind a proxy)",
        shown="the URL the client called",
    ),
    Option(
        "--insecure",
        "EASEL_INSECURE",
        To.SETTINGS,
        "insecure",
        (SERVE,),
        False,
        "serve without API keys on a non-loopback address, which is refused otherwise",
        kind="switch",
    ),
    Option(
        "--allow-pickle",
        "EASEL_ALLOW_PICKLE",
        To.ENGINE,
        "allow_pickle",
        STORAGE,
        _ENGINE.allow_pickle,
        "also load `.ckpt` / `.pt` / `.bin` checkpoints, which can run code; refused otherwise",
        kind="switch",
    ),
    Option(
        "--max-queue",
        "EASEL_MAX_QUEUE",
        To.ENGINE,
        "max_queue",
        BOTH,
        _ENGINE.max_queue,
        'waiting jobs; beyond them new tasks are refused at once as "busy": PICPIK `RetCode` '
        "10050, Runware `serverBusy`",
        int,
    ),
    Option(
        "--shutdown-grace-s",
        "EASEL_SHUTDOWN_GRACE_S",
        To.SETTINGS,
        "shutdown_grace_s",
        (SERVE,),
        30.0,
        "on `SIGTERM`, how long open requests, then the running batch, may take to finish; "
        "unfinished tasks run again at the next start",
        float,
    ),
    # --- the engine ---
    Option(
        "--devices",
        "EASEL_DEVICES",
        To.ENGINE,
        "devices",
        BOTH,
        (),
        "comma-separated torch devices, e.g. `cuda:0,cuda:1`; one worker thread per device",
        parse.comma_list,
        shown="every CUDA GPU, else `cpu`",
    ),
    Option(
        "--max-batch-images",
        "EASEL_MAX_BATCH_IMAGES",
        To.ENGINE,
        "max_batch_images",
        BOTH,
        _ENGINE.max_batch_images,
        "most images one batched forward may hold; 0: the default",
        parse.optional_count,
        shown="16 on the CPU, 64 on a GPU, lowered to what the GPU's memory holds",
    ),
    Option(
        "--batch-window-ms",
        "EASEL_BATCH_WINDOW_MS",
        To.ENGINE,
        "batch_window_ms",
        BOTH,
        _ENGINE.batch_window * 1000,  # EngineConfig.batch_window is in seconds
        "how long a partly filled batch waits for more jobs",
        float,
    ),
    Option(
        "--dtype",
        "EASEL_DTYPE",
        To.ENGINE,
        "dtype",
        BOTH,
        _ENGINE.dtype,
        "precision of weights and activations",
        choices=("auto", "fp16", "bf16", "fp32"),
        shown=f"`{_ENGINE.dtype}`: fp16 on GPUs, fp32 on the CPU",
    ),
    Option(
        "--compile",
        "EASEL_COMPILE",
        To.ENGINE,
        "compile",
        BOTH,
        _ENGINE.compile,
        "`torch.compile` the UNet: batch sizes padded to powers of two, each size compiled on "
        "first use of a model and size",
        kind="switch",
    ),
    Option(
        "--preload",
        "EASEL_PRELOAD",
        To.ENGINE,
        "preload",
        BOTH,
        parse.preload("default"),  # EngineConfig built in code preloads nothing
        "checkpoints each device loads at start, so that `/readyz` turns ready before the "
        "first job: codes, `default` (the default checkpoint) or `none` (nothing)",
        parse.preload,
        shown="default",
        metavar="CODE[,CODE]",
    ),
    # --- the cluster ---
    Option(
        "--broker",
        "EASEL_BROKER",
        To.SETTINGS,
        "broker_url",
        BOTH,
        None,
        "the cluster's Redis: `easel serve` runs as an API replica whose jobs go to the "
        "`easel worker`s that take them from its queues",
        shown="none: one process runs everything; required by `easel worker`",
        metavar="redis://HOST:PORT/N",
        required_by=(WORKER,),
    ),
    Option(
        "--retention-hours",
        "EASEL_RETENTION_HOURS",
        To.SETTINGS,
        "retention_hours",
        BOTH,
        ClusterConfig.retention_s / 3600,
        "task records and result images are deleted after this; give replicas and workers "
        "the same value",
        float,
    ),
    # --- what clients may ask ---
    Option(
        "--allow-url-net",
        "EASEL_ALLOW_URL_NETS",
        To.SETTINGS,
        "url_allow",
        (SERVE,),
        (),
        "a private or loopback network that image URLs, `uploadEndpoint` and `webhookURL` may "
        "reach; repeatable",
        parse.url_network,
        kind="list",
        shown="public addresses only",
        metavar="CIDR",
    ),
    Option(
        "--max-body-mb",
        "EASEL_MAX_BODY_MB",
        To.LIMITS,
        "max_body_bytes",
        (SERVE,),
        _LIMITS.max_body_bytes,
        "largest HTTP request body, refused as it streams in: PICPIK RetCode 10004, Runware "
        "HTTP 413 `payloadTooLarge`",
        parse.mib,
        shown=parse.mib_text(_LIMITS.max_body_bytes),
        metavar="N",
    ),
    Option(
        "--max-image-mb",
        "EASEL_MAX_IMAGE_MB",
        To.LIMITS,
        "max_image_bytes",
        (SERVE,),
        _LIMITS.max_image_bytes,
        "largest image file sent inline (its base64 may be 4/3 of it) or fetched from a URL",
        parse.mib,
        shown=parse.mib_text(_LIMITS.max_image_bytes),
        metavar="N",
    ),
    Option(
        "--max-image-megapixels",
        "EASEL_MAX_IMAGE_MEGAPIXELS",
        To.LIMITS,
        "max_image_pixels",
        (SERVE,),
        _LIMITS.max_image_pixels,
        "largest decoded input image, in megapixels or as WIDTHxHEIGHT; decompression bombs "
        "are refused from their header; Pillow itself refuses above about 179 megapixels",
        parse.pixels,
        shown=parse.pixels_text(_LIMITS.max_image_pixels),
        metavar="N",
    ),
    Option(
        "--max-request-megapixels",
        "EASEL_MAX_REQUEST_MEGAPIXELS",
        To.LIMITS,
        "max_request_pixels",
        (SERVE,),
        _LIMITS.max_request_pixels,
        "width x height x images of one generation (PICPIK `BatchSize`, Runware "
        "`numberResults`), "
        "and an upscale's output, in megapixels or as WIDTHxHEIGHT",
        parse.pixels,
        shown=f"{parse.pixels_text(_LIMITS.max_request_pixels)}: 32 images of 1024x1024",
        metavar="N",
    ),
    Option(
        "--max-prompt-chars",
        "EASEL_MAX_PROMPT_CHARS",
        To.LIMITS,
        "max_prompt_chars",
        (SERVE,),
        _LIMITS.max_prompt_chars,
        "longest prompt, each positive or negative one (after a legacy style template), and "
        "`promptEnhance` / caption prompts",
        parse.count,
        metavar="N",
    ),
    Option(
        "--ws-max-frame-mb",
        "EASEL_WS_MAX_FRAME_MB",
        To.LIMITS,
        "ws_max_frame_bytes",
        (SERVE,),
        _LIMITS.ws_max_frame_bytes,
        "largest Runware WebSocket message: a larger one gets `payloadTooLarge`, one above 1.25 "
        "times it (at least 1 MiB more) closes the socket with 1009",
        parse.mib,
        shown=parse.mib_text(_LIMITS.ws_max_frame_bytes),
        metavar="N",
    ),
    Option(
        "--ws-messages-per-s",
        "EASEL_WS_MESSAGES_PER_S",
        To.LIMITS,
        "ws_messages_per_s",
        (SERVE,),
        _LIMITS.ws_messages_per_s,
        "tasks per second one WebSocket may send; more are refused with `tooManyMessages`, "
        "pings are always answered",
        parse.rate,
        metavar="N",
    ),
    Option(
        "--ws-burst",
        "EASEL_WS_BURST",
        To.LIMITS,
        "ws_burst",
        (SERVE,),
        _LIMITS.ws_burst,
        "tasks one WebSocket may send at once above its rate",
        parse.count,
        metavar="N",
    ),
    # --- logs ---
    Option(
        "--log-json",
        "EASEL_LOG_JSON",
        To.COMMAND,
        "log_json",
        BOTH,
        False,
        "log one JSON object per line: `ts`, `level`, `logger`, `message`, and `task_id` / "
        "`state` / `protocol` / `action` on task state changes; off: text lines",
        kind="switch",
    ),
    Option(
        "--log-level",
        "EASEL_LOG_LEVEL",
        To.COMMAND,
        "log_level",
        BOTH,
        "info",
        "debug, info (one line per task state change, with its id), warning or error",
    ),
    # --- `easel worker` alone ---
    Option(
        "--concurrency",
        "EASEL_WORKER_CONCURRENCY",
        To.COMMAND,
        "concurrency",
        (WORKER,),
        16,
        "tasks taken at once and fed to the engine together, 1 to `--max-queue`",
        int,
    ),
    Option(
        "--name",
        "EASEL_WORKER_NAME",
        To.COMMAND,
        "name",
        (WORKER,),
        None,
        "the worker's name in the cluster",
        shown="easel-PID@HOST",
    ),
    Option(
        "--visibility-timeout",
        "EASEL_VISIBILITY_TIMEOUT",
        To.CLUSTER,
        "visibility_timeout_s",
        (WORKER,),
        ClusterConfig.visibility_timeout_s,
        "seconds after which a job whose worker died is delivered again; keep it above the "
        "longest job",
        float,
    ),
    Option(
        "--restore-interval",
        "EASEL_RESTORE_INTERVAL",
        To.CLUSTER,
        "restore_interval_s",
        (WORKER,),
        ClusterConfig.restore_interval_s,
        "seconds between checks for jobs to deliver again",
        float,
    ),
    Option(
        "--heartbeat",
        "EASEL_HEARTBEAT",
        To.CLUSTER,
        "heartbeat_s",
        (WORKER,),
        ClusterConfig.heartbeat_s,
        "seconds between heartbeats; a running job's lease lasts three",
        float,
    ),
    Option(
        "--metrics-port",
        "EASEL_METRICS_PORT",
        To.COMMAND,
        "metrics_port",
        (WORKER,),
        0,
        "serve the worker's Prometheus metrics at `http://0.0.0.0:PORT/metrics`",
        int,
        shown="`0`: off",
    ),
)


# Settings' defaults: Settings.<field> = SETTINGS_DEFAULTS["<field>"] (server/settings.py)
SETTINGS_DEFAULTS: dict[str, Any] = {
    option.field: option.default for option in OPTIONS if option.to in (To.SETTINGS, To.ENGINE)
}


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if command in option.commands)


def _env_text(option: Option) -> str | None:
    """The option's variable, or None when it is unset or blank."""
    text = os.environ.get(option.env)
    return text if text is not None and text.strip() else None


def cli_default(option: Option) -> Any:
    """argparse's default: what the variable says, else the default. A variable's text is left
    as text: argparse runs a text default through `type`, so a bad one is refused like a bad
    flag (`argument --port: invalid int value: 'x'`). A list's variable is read after parsing
    (list_value), since argparse would not split it."""
    text = _env_text(option)
    if option.kind == "switch":
        return text.strip().lower() in TRUE_WORDS if text is not None else option.default
    if option.kind == "list":
        return None
    return text if text is not None else option.default


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's options, in table order; the request limits in a group of their own."""
    limits = parser.add_argument_group("request limits")
    for option in options_for(command):
        target = limits if option.to is To.LIMITS else parser
        default = cli_default(option)
        extra: dict[str, Any] = {}
        if option.kind == "switch":
            extra["action"] = "store_true"
        else:
            extra["action"] = "append" if option.kind == "list" else "store"
            extra["type"] = option.parse
            extra["metavar"] = option.metavar
            if option.choices:
                extra["choices"] = option.choices
        if command in option.required_by and default is None:
            extra["required"] = True
        help_text = option.cli_help.replace("%", "%%")  # argparse formats help with %
        target.add_argument(option.flag, default=default, help=help_text, **extra)


def list_value(args: argparse.Namespace, option: Option) -> tuple[Any, ...]:
    """A list option's values: the flags', else its variable's comma-separated ones. ValueError
    names the variable when one of its values is malformed."""
    given = getattr(args, option.dest, None)
    if given is not None:
        return tuple(given)
    items = [item for item in (_env_text(option) or "").split(",") if item.strip()]
    try:
        return tuple(option.parse(item) for item in items)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{option.env}: {error}") from None


def value(args: argparse.Namespace, option: Option) -> Any:
    """The option's value for the parsed arguments (the default where the command lacks it).
    ValueError names the variable when its value is malformed: a list's item, or a choice
    (argparse checks a flag's choice, but not a default's, which is where a variable goes)."""
    if option.kind == "list":
        return list_value(args, option) if hasattr(args, option.dest) else option.default
    found = getattr(args, option.dest, option.default)
    if option.choices and found not in option.choices:
        choices = ", ".join(option.choices)
        raise ValueError(f"{option.env}: {found!r} is not one of {choices}")
    return found


def by_flag(flag: str) -> Option:
    (option,) = [option for option in OPTIONS if option.flag == flag]
    return option
