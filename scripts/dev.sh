#!/usr/bin/env bash
# One entry point for a fresh machine: it builds (or reuses) the virtual environment, then
#   scripts/dev.sh serve [easel serve options]   starts the server on its embedded defaults
#   scripts/dev.sh test  [pytest options]        lints, type-checks and runs the whole test
#                                                suite, after installing the Debian packages it drives
#                                                (scripts/system_packages.sh)
# The environment lives outside the checkout, keyed by the dependency list and the Python
# version, so CI and fresh clones reuse it until pyproject.toml's dependencies change.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
key=$("$python" scripts/venv_key.py)
venv_root=${EASEL_VENV_ROOT:-$HOME/.cache/easel/venvs}
venv=$venv_root/$key
mkdir -p "$venv_root"

(
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    echo "easel: building the environment in $venv (first run: a few minutes)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip setuptools wheel
    "$python" scripts/venv_key.py --requirements > "$venv/requirements.txt"
    "$venv/bin/pip" install -q -r "$venv/requirements.txt"
    # Client SDKs for the end-to-end tests, one folder each (they share a package name).
    "$python" scripts/venv_key.py --client-sdks | while read -r name spec; do
      "$venv/bin/pip" install -q --target "$venv/sdks/$name" "$spec"
    done
    touch "$venv/.complete"
  fi
  # The project itself is installed editable on every run: cheap, and it follows this checkout.
  if ! "$venv/bin/pip" install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    "$venv/bin/pip" install --no-deps --no-build-isolation -e .
  fi
) 9>"$venv_root/.$key.lock"

export PATH="$venv/bin:$PATH"
command=${1:-}
shift || true
case "$command" in
  serve)
    exec easel serve "$@"
    ;;
  test)
    scripts/system_packages.sh
    # The browser and cluster tests fail rather than skip when their programs are missing.
    export EASEL_REQUIRE_SYSTEM_PACKAGES=1
    ruff check .
    lint-imports
    mypy  # server/, pipelines/ and models/, configured in pyproject.toml [tool.mypy]
    exec python -m pytest "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh serve|test [options]" >&2
    exit 2
    ;;
esac
