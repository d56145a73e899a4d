#!/usr/bin/env bash
# The project's virtualenv (.venv), exactly as locked in uv.lock, dev tools included.
# uv itself is pinned and kept in .local/tools. A no-op, in well under a second, when in sync.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.local/tools"
UV_VERSION=0.13.8

if [[ ! -x "$TOOLS/bin/uv" ]] || [[ "$("$TOOLS/bin/uv" --version)" != "uv $UV_VERSION "* ]]; then
    echo "venv: installing uv==$UV_VERSION into $TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

cd "$ROOT"
# Only PyPI is reachable: use the machine's Python 3.11, never a downloaded one.
UV_PYTHON_DOWNLOADS=never "$TOOLS/bin/uv" sync --frozen --quiet
