"""The `easel` command: `easel serve` runs the server, `easel models` lists the models
(`easel models pull` installs one).

Every option can also come from an EASEL_* environment variable (the flag wins), so a container
is configured with its environment alone; server/options.py defines them all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import EngineConfig
from server.cluster.config import ClusterConfig
from server.keys import KeysFileError, KeyStore
from server.keys_cli import add_keys_parser, default_keys_file, run_keys
from server.limits import Limits
from server.logs import configure_logging
from server.models_cli import add_models_parser, run_models
from server.options import (
    MODELS,
    OPTIONS,
    SERVE,
    WORKER,
    To,
    add_options,
    by_flag,
    cli_default,
    value,
)
from server.settings import Settings

if TYPE_CHECKING:  # the engine imports torch and diffusers: only the commands that run it do
    from pipelines.engine import Engine
    from pipelines.jobs import ModelInfo

log = logging.getLogger("easel")


def build_parser() -> argparse.ArgumentParser:
    """`easel serve`, `easel worker` and the storage options of `easel models` take their
    options from the table in server/options.py."""
    parser = argparse.ArgumentParser(prog="easel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API server")
    add_options(serve, SERVE)
    worker = commands.add_parser("worker", help="run a GPU worker of a cluster (needs --broker)")
    add_options(worker, WORKER)
    add_models_parser(commands, lambda models: add_options(models, MODELS))
    add_keys_parser(commands, str(cli_default(by_flag("--data-dir"))))
    return parser


def _keys_file(args: argparse.Namespace) -> Path | None:
    """--keys-file, else the data directory's keys.json when `easel keys` has made one."""
    if getattr(args, "keys_file", None):
        return Path(args.keys_file)
    if not hasattr(args, "keys_file"):
        return None
    default = default_keys_file(args.data_dir)
    return default if default.exists() else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the parsed arguments: every option that goes to Settings (the default
    where the command lacks it), the keys file found, the request limits gathered. ValueError
    names a malformed value of a list's variable (EASEL_ALLOW_URL_NETS)."""
    values = {
        option.field: value(args, option)
        for option in OPTIONS
        if option.to in (To.SETTINGS, To.ENGINE)
    }
    values["keys_file"] = _keys_file(args)
    values["public_url"] = values["public_url"] or None  # --public-url "": the client's URL
    values["broker_url"] = values["broker_url"] or None
    return Settings(**values, limits=limits_from_args(args))


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(
        **{option.field: value(args, option) for option in OPTIONS if option.to is To.LIMITS}
    )


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    """The cluster options; an API replica (no worker options) has ClusterConfig's defaults."""
    return ClusterConfig(
        broker_url=value(args, by_flag("--broker")),
        retention_s=value(args, by_flag("--retention-hours")) * 3600,
        **{option.field: value(args, option) for option in OPTIONS if option.to is To.CLUSTER},
    )


def engine_config(settings: Settings) -> EngineConfig:
    """The engine options of Settings as the engine takes them (server/options.py: To.ENGINE)."""
    return EngineConfig(
        max_queue=settings.max_queue,
        max_batch_images=settings.max_batch_images,
        batch_window=settings.batch_window_ms / 1000,
        compile=settings.compile,
        dtype=settings.dtype,
        devices=settings.devices or None,
        allow_pickle=settings.allow_pickle,
        preload=settings.preload,
    )


def open_engine(settings: Settings) -> Engine:
    from pipelines.engine import Engine

    config = engine_config(settings)
    engine, notes = Engine.open(settings.resolved_models_dir, settings.data_dir, config)
    for note in notes:
        log.warning("%s", note)
    return engine


def _describe(model: ModelInfo, aliases: dict[str, str]) -> str:
    public = [alias for alias, code in aliases.items() if code == model.code]
    extra = f"  <- {', '.join(public)}" if public else ""
    return f"{model.code:32} {model.architecture:7} {model.name}{extra}"


def serve(args: argparse.Namespace) -> int:
    from server.app import build_app
    from server.operator_routes import run_server

    try:
        settings = settings_from_args(args)
    except ValueError as error:
        log.error("%s", error)
        return 2
    try:
        keys = KeyStore.load(settings.keys_file)
    except KeysFileError as error:
        log.error("%s", error)
        return 2
    if keys.open and not settings.is_loopback and not settings.insecure:
        log.error(
            "refusing to serve on %s without API keys: pass --keys-file, bind to 127.0.0.1, "
            "or accept an open server with --insecure",
            settings.host,
        )
        return 2
    try:
        engine = open_engine(settings)
    except ValueError as error:
        log.error("%s", error)
        return 2
    aliases = engine.model_aliases()
    log.info("models directory: %s", settings.resolved_models_dir)
    for model in engine.list_models():
        log.info("model: %s", _describe(model, aliases))
    backend = None
    if settings.broker_url:
        from server.cluster.dispatch import broker_backend

        backend = broker_backend(engine, cluster_config(args))
        log.info("cluster API replica: jobs go to the workers of %s", settings.broker_url)
    else:
        log.info("devices: %s", ", ".join(engine.devices))
    log.info(
        "authentication: %s",
        "off (open server)" if keys.open else f"API keys required ({settings.keys_file})",
    )
    log.info("listening on http://%s:%d", settings.host, settings.port)
    app = build_app(settings, engine, keys, backend)
    return run_server(  # uvicorn.run, and /engine/events streams end at shutdown
        app,
        json_logs=args.log_json,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        # Frames up to the hard cap are read and refused with payloadTooLarge when over the
        # limit; a larger one closes the socket with 1009 (server/runware/throttle.py).
        ws_max_size=settings.limits.ws_hard_cap_bytes,
        ws_ping_interval=None,  # Runware clients ping at the protocol level
        # SIGTERM: stop accepting, close sockets (1012), let in-flight requests end within this
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


def run_worker(args: argparse.Namespace) -> int:
    from server.cluster.run import run_worker as run

    try:
        settings = settings_from_args(args)
        engine = open_engine(settings)
    except ValueError as error:
        log.error("%s", error)
        return 2
    if args.concurrency < 1 or args.concurrency > settings.max_queue:
        log.error("--concurrency must be between 1 and --max-queue (%d)", settings.max_queue)
        return 2
    return run(
        engine,
        cluster_config(args),
        args.name,
        args.concurrency,
        args.log_level,
        metrics_port=args.metrics_port,
        quiet=args.log_json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "info"), getattr(args, "log_json", False))
    handlers = {"serve": serve, "worker": run_worker, "models": run_models, "keys": run_keys}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
