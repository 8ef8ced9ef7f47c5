"""The `easel` command: `easel serve` runs the server, `easel models` lists the models
(`easel models pull` installs one).

Every option can also come from an EASEL_* environment variable (the flag wins), so a container
is configured with its environment alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server.cluster.config import ClusterConfig
from server.keys import KeysFileError, KeyStore
from server.keys_cli import add_keys_parser, default_keys_file, run_keys
from server.limits_cli import add_limit_options, limits_from_args
from server.logs import configure_logging
from server.models_cli import add_models_parser, run_models
from server.outbound import parse_network
from server.settings import Settings

if TYPE_CHECKING:  # the engine imports torch and diffusers: only the commands that run it do
    from pipelines.engine import Engine
    from pipelines.jobs import ModelInfo

log = logging.getLogger("easel")

_TRUE = {"1", "true", "yes", "on"}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EASEL_{name}", default)


def _env_flag(name: str) -> bool:
    return (_env(name) or "").strip().lower() in _TRUE


def _url_network(text: str) -> str:
    try:
        return str(parse_network(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _url_networks(args: argparse.Namespace) -> tuple[str, ...]:
    """--allow-url-net values, else EASEL_ALLOW_URL_NETS; ValueError names a malformed one."""
    if args.allow_url_net is not None:
        return tuple(args.allow_url_net)
    nets = [net for net in (_env("ALLOW_URL_NETS") or "").split(",") if net.strip()]
    try:
        return tuple(str(parse_network(net)) for net in nets)
    except ValueError as error:
        raise ValueError(f"EASEL_ALLOW_URL_NETS: {error}") from None


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR", "easel-data")),
        help="task store, results and the demo model (EASEL_DATA_DIR)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=_env("MODELS_DIR"),
        help="checkpoints, LoRAs... (EASEL_MODELS_DIR; default DATA_DIR/models)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        default=_env_flag("ALLOW_PICKLE"),
        help="also load .ckpt/.pt/.bin checkpoints, which can run code (EASEL_ALLOW_PICKLE=1)",
    )


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-queue",
        type=int,
        default=int(_env("MAX_QUEUE", "64") or 64),
        help="jobs waiting beyond this are refused as busy (EASEL_MAX_QUEUE)",
    )
    parser.add_argument(
        "--max-batch-images",
        type=int,
        default=int(_env("MAX_BATCH_IMAGES", "0") or 0) or None,
        help="most images one batched forward may hold (EASEL_MAX_BATCH_IMAGES; default 16 on "
        "the CPU, 64 on a GPU, lowered by the GPU's memory)",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=float(_env("BATCH_WINDOW_MS", "10") or 10),
        help="how long a partly filled batch waits for more jobs (EASEL_BATCH_WINDOW_MS)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        default=_env_flag("COMPILE"),
        help="torch.compile the UNet, batch sizes padded to powers of two; the first batch of "
        "each size compiles (EASEL_COMPILE=1)",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "fp16", "bf16", "fp32"),
        default=_env("DTYPE", "auto"),
        help="precision of weights and activations (EASEL_DTYPE; auto: fp16 on GPUs, fp32 on "
        "the CPU)",
    )
    parser.add_argument(
        "--devices",
        default=_env("DEVICES", ""),
        help="comma-separated torch devices, e.g. cuda:0,cuda:1 (EASEL_DEVICES; "
        "default: every GPU, else the CPU)",
    )
    parser.add_argument(
        "--preload",
        default=_env("PRELOAD", "default"),
        metavar="CODE[,CODE]",
        help="checkpoints every device loads at start, so the server is ready (GET /readyz) "
        "before its first job (EASEL_PRELOAD; default: the default checkpoint; none: load "
        "nothing until the first job)",
    )


def _preload(text: str) -> tuple[str, ...]:
    """--preload: "none" loads nothing, "default" is the catalogue's default checkpoint ("")."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if [name.lower() for name in names] in ([], ["none"]):
        return ()
    return tuple("" if name.lower() == "default" else name for name in names)


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), help="(EASEL_LOG_LEVEL)")
    parser.add_argument(
        "--log-json",
        action="store_true",
        default=_env_flag("LOG_JSON"),
        help="log one JSON object a line: ts, level, logger, message, and task_id / state / "
        "protocol / action on task state changes (EASEL_LOG_JSON=1)",
    )


def _add_cluster_options(parser: argparse.ArgumentParser, *, worker: bool = False) -> None:
    parser.add_argument(
        "--broker",
        default=_env("BROKER"),
        required=worker and not _env("BROKER"),
        metavar="redis://HOST:PORT/N",
        help="the cluster's Redis: "
        + (
            "take jobs from its queues (EASEL_BROKER)"
            if worker
            else "run as an API replica whose jobs go to `easel worker`s (EASEL_BROKER)"
        ),
    )
    parser.add_argument(
        "--retention-hours",
        type=float,
        default=float(_env("RETENTION_HOURS", "24") or 24),
        help="task records and images are deleted after this (EASEL_RETENTION_HOURS)",
    )
    if not worker:
        return
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(_env("WORKER_CONCURRENCY", "16") or 16),
        help="tasks taken at once and fed to the engine together (EASEL_WORKER_CONCURRENCY)",
    )
    parser.add_argument(
        "--name",
        default=_env("WORKER_NAME"),
        help="the worker's name in the cluster (EASEL_WORKER_NAME; default easel-PID@HOST)",
    )
    parser.add_argument(
        "--visibility-timeout",
        type=float,
        default=float(_env("VISIBILITY_TIMEOUT", "7200") or 7200),
        help="seconds after which a job whose worker died is delivered again; keep it above "
        "the longest job (EASEL_VISIBILITY_TIMEOUT)",
    )
    parser.add_argument(
        "--restore-interval",
        type=float,
        default=float(_env("RESTORE_INTERVAL", "10") or 10),
        help="seconds between checks for jobs to deliver again (EASEL_RESTORE_INTERVAL)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=float(_env("HEARTBEAT", "2") or 2),
        help="seconds between heartbeats; a running job's lease lasts three (EASEL_HEARTBEAT)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="(EASEL_HOST)")
    serve.add_argument(
        "--port", type=int, default=int(_env("PORT", "7860") or 7860), help="(EASEL_PORT)"
    )
    _add_storage_options(serve)
    serve.add_argument(
        "--keys-file",
        type=Path,
        default=_env("KEYS_FILE"),
        help="API keys, as `easel keys` writes them (EASEL_KEYS_FILE; default DATA_DIR/keys.json "
        "if it exists; with neither the server runs open)",
    )
    serve.add_argument(
        "--public-url",
        default=_env("PUBLIC_URL"),
        help="base of result image URLs, e.g. behind a proxy (EASEL_PUBLIC_URL)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=_env_flag("INSECURE"),
        help="serve without keys on a non-loopback address (EASEL_INSECURE=1)",
    )
    _add_engine_options(serve)
    _add_cluster_options(serve)
    serve.add_argument(
        "--allow-url-net",
        action="append",
        type=_url_network,
        metavar="CIDR",
        help="a private/loopback network that image URLs, uploadEndpoint and webhookURL may "
        "reach; repeatable (EASEL_ALLOW_URL_NETS, comma-separated; default: public addresses only)",
    )
    serve.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=float(_env("SHUTDOWN_GRACE_S", "30") or 30),
        help="on SIGTERM, how long in-flight requests, then the running batch, may take to "
        "finish; unfinished tasks run again at the next start (EASEL_SHUTDOWN_GRACE_S)",
    )
    _add_log_options(serve)
    add_limit_options(serve)

    worker = commands.add_parser("worker", help="run a GPU worker of a cluster (needs --broker)")
    _add_storage_options(worker)
    _add_engine_options(worker)
    _add_cluster_options(worker, worker=True)
    _add_log_options(worker)
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0") or 0),
        help="serve the worker's Prometheus metrics at http://0.0.0.0:PORT/metrics "
        "(EASEL_METRICS_PORT; default 0: off)",
    )

    add_models_parser(commands, _add_storage_options)
    add_keys_parser(commands, _env("DATA_DIR", "easel-data") or "easel-data")
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
    return Settings(
        host=getattr(args, "host", Settings.host),
        port=getattr(args, "port", Settings.port),
        data_dir=args.data_dir,
        models_dir=Path(args.models_dir) if args.models_dir else None,
        keys_file=_keys_file(args),
        public_url=getattr(args, "public_url", None) or None,
        insecure=getattr(args, "insecure", False),
        allow_pickle=args.allow_pickle,
        max_queue=args.max_queue,
        max_batch_images=args.max_batch_images,
        batch_window_ms=args.batch_window_ms,
        compile=args.compile,
        dtype=args.dtype,
        devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()),
        url_allow=_url_networks(args) if hasattr(args, "allow_url_net") else (),
        retention_hours=args.retention_hours,
        broker_url=args.broker or None,
        limits=limits_from_args(args),
        shutdown_grace_s=getattr(args, "shutdown_grace_s", Settings.shutdown_grace_s),
        preload=_preload(getattr(args, "preload", "none")),
    )


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        broker_url=args.broker,
        retention_s=args.retention_hours * 3600,
        visibility_timeout_s=getattr(args, "visibility_timeout", 7200.0),
        restore_interval_s=getattr(args, "restore_interval", 10.0),
        heartbeat_s=getattr(args, "heartbeat", 2.0),
    )


def open_engine(settings: Settings) -> Engine:
    from pipelines.engine import Engine, EngineConfig

    config = EngineConfig(
        max_queue=settings.max_queue,
        max_batch_images=settings.max_batch_images,
        batch_window=settings.batch_window_ms / 1000,
        compile=settings.compile,
        dtype=settings.dtype,
        devices=settings.devices or None,
        allow_pickle=settings.allow_pickle,
        preload=settings.preload,
    )
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
