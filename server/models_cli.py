"""`easel models`: what is installed; `easel models pull SOURCE`: install a model.

    easel models [--models-dir D]                       every model, its kind, file and the
                                                        public codes that resolve to it
    easel models pull URL|OWNER/NAME[@REV][/PATH] [--as CODE] [--kind KIND] [--sha256 HEX]
                      [--force] [--models-dir D]

A pull downloads into the models directory's `.partial/` folder (run the same command again to
resume an interrupted one), checks the sha256, reads the file's header to tell its kind, and moves
it to the kind's folder as CODE.safetensors. The server reads the models directory when it starts,
so a running server needs a restart to serve a new model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from pipelines.installs import (
    INSTALL_KINDS,
    KIND_CHOICES,
    InstalledModel,
    Pulled,
    PullError,
    PullOptions,
    describe_size,
    describe_speed,
    installed_models,
    pull_model,
)
from server.settings import Settings

log = logging.getLogger("easel")

RESTART_HINT = (
    "restart `easel serve` to serve it: the server reads the models directory when it starts"
)


def add_models_parser(
    commands: argparse._SubParsersAction,
    add_storage_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    models = commands.add_parser(
        "models", help="list installed models, or pull one (`easel models pull --help`)"
    )
    add_storage_options(models)
    actions = models.add_subparsers(dest="models_command", metavar="{pull}")
    pull = actions.add_parser(
        "pull",
        help="download a .safetensors model into the models directory",
        description="Download a .safetensors model (resumable, sha256-checked) and install it "
        "in the models directory's folder for its kind.",
    )
    pull.add_argument(
        "source",
        help="an http(s) URL of a .safetensors file, or a Hugging Face repo id: OWNER/NAME, "
        "OWNER/NAME@REVISION, OWNER/NAME/PATH/IN/REPO.safetensors",
    )
    pull.add_argument(
        "--as", dest="code", metavar="CODE", help="the model's code (default: the file's name)"
    )
    pull.add_argument(
        "--kind",
        choices=KIND_CHOICES,
        metavar="KIND",
        help=f"install as this kind: {', '.join(INSTALL_KINDS)} (default: read from the file)",
    )
    pull.add_argument(
        "--sha256", metavar="HEX", help="the file's expected sha256 (default: what the server "
        "publishes, if it does)",
    )  # fmt: skip
    pull.add_argument(
        "--force", action="store_true", help="replace an installed file of the same name"
    )
    pull.add_argument(
        "--retries",
        type=int,
        default=3,
        help="times a dropped connection is resumed before giving up (default 3)",
    )
    # Also accepted after `pull`; SUPPRESS keeps values given before it (`easel models --x pull`).
    pull.add_argument(
        "--models-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="where to install (EASEL_MODELS_DIR; default DATA_DIR/models)",
    )
    pull.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="the server's data directory (EASEL_DATA_DIR)",
    )


def run_models(args: argparse.Namespace) -> int:
    settings = Settings(
        data_dir=args.data_dir, models_dir=Path(args.models_dir) if args.models_dir else None
    )
    if getattr(args, "models_command", None) == "pull":
        return _pull(args, settings.resolved_models_dir)
    return _list(settings, args.allow_pickle)


# --- listing -------------------------------------------------------------------------------------


def _list(settings: Settings, allow_pickle: bool) -> int:
    models_dir = settings.resolved_models_dir
    try:
        models, notes = installed_models(models_dir, settings.data_dir, allow_pickle=allow_pickle)
    except ValueError as error:
        log.error("%s", error)
        return 2
    for note in notes:
        log.warning("%s", note)
    print(f"models directory: {models_dir}")
    rows: list[tuple[str, ...]] = [("KIND", "CODE", "ARCH", "PATH", "PUBLIC IDS")]
    rows += [_row(model, models_dir) for model in models]
    print_table(rows, sys.stdout)
    return 0


def _row(model: InstalledModel, models_dir: Path) -> tuple[str, ...]:
    path = model.path
    for root in (models_dir, models_dir.resolve()):
        if path.is_relative_to(root):
            path = path.relative_to(root)
            break
    shown = f"{path} (built-in demo: draws noise)" if model.is_demo else str(path)
    return (model.kind, model.code, model.architecture, shown, ", ".join(model.public_ids))


def print_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


# --- pulling -------------------------------------------------------------------------------------


class ProgressBar:
    """A tqdm bar on stderr while bytes arrive (drawn only on a terminal); notes on stderr."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.bar: tqdm | None = None

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.out)
        else:
            print(message, file=self.out, flush=True)

    def start(self, total: int | None, done: int) -> None:
        self.finish()
        self.bar = tqdm(
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.out,
            disable=not self.out.isatty(),  # logs and pipes get the summary lines only
            dynamic_ncols=True,
            miniters=1,
        )

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _pull(args: argparse.Namespace, models_dir: Path) -> int:
    options = PullOptions(
        source=args.source,
        models_dir=models_dir,
        code=args.code,
        kind=args.kind,
        sha256=args.sha256,
        force=args.force,
        retries=max(0, args.retries),
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        pulled = pull_model(options, ProgressBar())
    except PullError as error:
        print(f"easel models pull: {error}", file=sys.stderr)
        return 1
    for line in describe_pull(pulled):
        print(line)
    return 0


def describe_pull(pulled: Pulled) -> list[str]:
    """What the operator reads after a pull: the transfer, the checksum, where it went."""
    lines = []
    if pulled.received or not pulled.resumed_from:
        resumed = (
            f", resumed at {describe_size(pulled.resumed_from)}" if pulled.resumed_from else ""
        )
        lines.append(
            f"downloaded {describe_size(pulled.received)} in {pulled.seconds:.1f} s "
            f"({describe_speed(pulled.received, pulled.seconds)}){resumed}; file "
            f"{describe_size(pulled.size)}"
        )
    else:
        lines.append(f"the earlier download was complete ({describe_size(pulled.size)})")
    check = (
        f"verified against {pulled.verified_by}"
        if pulled.verified_by
        else "not verified: no published digest; pass --sha256 to check it"
    )
    lines.append(f"sha256 {pulled.sha256} ({check})")
    what = f"{'inpainting ' if pulled.inpainting else ''}{pulled.kind} ({pulled.architecture})"
    if pulled.unchanged:
        lines.append(f"already installed: {pulled.path} is the same file; {what} {pulled.code!r}")
    else:
        verb = "replaced" if pulled.replaced else "installed"
        lines.append(f"{verb} {what} {pulled.code!r} at {pulled.path}")
    if pulled.public_ids:
        lines.append(f"clients may also send: {', '.join(pulled.public_ids)}")
    lines += [f"note: {note}" for note in pulled.notes]
    if not pulled.unchanged:
        lines.append(RESTART_HINT)
    return lines
