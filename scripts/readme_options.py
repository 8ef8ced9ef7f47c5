"""Writes README.md's option tables from the option table, server/options.py.

    python scripts/readme_options.py          # rewrite README.md between the two markers
    python scripts/readme_options.py --check  # exit 1, saying so, when README.md is stale

The text between BEGIN and END is generated: edit server/options.py, not README.md.
tests/unit/test_options.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the packages are at the root

from server.options import OPTIONS, SERVE, WORKER, Option, options_for  # noqa: E402

README = ROOT / "README.md"
BEGIN = "<!-- options: generated from server/options.py by scripts/readme_options.py -->"
END = "<!-- end of options -->"
REGENERATE = "python scripts/readme_options.py"


def _code(text: str) -> str:
    """A default that is one word reads as code (`7860`); a sentence stays prose."""
    return f"`{text}`" if text and " " not in text and "`" not in text else text


def _flag(option: Option) -> str:
    usage = f"`{option.flag} {option.metavar}`" if option.metavar else f"`{option.flag}`"
    return f"{usage} (repeatable)" if option.kind == "list" else usage


def _variable(option: Option) -> str:
    if option.kind == "switch":
        return f"`{option.env}=1`"
    if option.kind == "list":
        return f"`{option.env}` (comma-separated)"
    return f"`{option.env}`"


def _table(options: tuple[Option, ...]) -> list[str]:
    lines = ["| option | variable | default | what it does |", "| --- | --- | --- | --- |"]
    for option in options:
        cells = (_flag(option), _variable(option), _code(option.shown_default), option.help)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def render() -> str:
    """The generated section, markers included."""
    shared = [option for option in options_for(SERVE) if WORKER in option.commands]
    worker_only = tuple(option for option in options_for(WORKER) if SERVE not in option.commands)
    required = [option.flag for option in OPTIONS if WORKER in option.required_by]
    lines = [
        BEGIN,
        "`easel serve` options, each also settable as an environment variable (the flag wins):",
        "",
        *_table(options_for(SERVE)),
        "",
        "`easel worker` takes "
        + ", ".join(f"`{option.flag}`" for option in shared)
        + " too ("
        + ", ".join(f"`{flag}`" for flag in required)
        + " required), and these:",
        "",
        *_table(worker_only),
        END,
    ]
    return "\n".join(lines)


def rewritten(readme: str) -> str:
    """README.md's text with the generated section put between its markers."""
    before, rest = readme.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return before + render() + after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args(argv)
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"README.md lacks the markers {BEGIN!r} and {END!r}", file=sys.stderr)
        return 1
    text = rewritten(readme)
    if text == readme:
        return 0
    if args.check:
        print(
            f"README.md's option tables differ from server/options.py: run `{REGENERATE}`",
            file=sys.stderr,
        )
        return 1
    README.write_text(text)
    print("README.md: option tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
