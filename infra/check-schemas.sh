#!/usr/bin/env bash
# The integrators' documents, checked: docs/schemas/ (a JSON Schema per event type) and
# docs/asyncapi/ (each service's AsyncAPI document) are exactly what the generators write today
# (so they cannot drift from the contract models), every schema is valid against its metaschema
# (check-jsonschema), and every AsyncAPI document passes the AsyncAPI validator (@asyncapi/cli,
# pinned, installed into .local/tools/node on the first run and reused after).
# Regenerate them with:
#   .venv/bin/python -m shared.schemas --out docs/schemas
#   .venv/bin/python -m shared.asyncapi --out docs/asyncapi
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON=.venv/bin/python
ASYNCAPI_CLI_VERSION=4.1.1  # 5.x and later need Node 24; this machine has Node 20
NODE_TOOLS="$ROOT/.local/tools/node"
ASYNCAPI="$NODE_TOOLS/node_modules/.bin/asyncapi"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. The committed files are what the generators write.
"$PYTHON" -m shared.schemas --out "$work/schemas" >/dev/null
"$PYTHON" -m shared.asyncapi --out "$work/asyncapi" >/dev/null
drift=0
for dir in schemas asyncapi; do
    if ! diff -r -u "docs/$dir" "$work/$dir" >"$work/$dir.diff"; then
        echo "check-schemas: docs/$dir differs from what the generator writes now:" >&2
        head -n 40 "$work/$dir.diff" >&2
        drift=1
    fi
done
if ((drift)); then
    echo "check-schemas: regenerate (see the top of infra/check-schemas.sh) and commit the result" >&2
    exit 1
fi

# 2. Every JSON Schema is valid against the metaschema it names (draft 2020-12).
mapfile -t schema_files < <(find docs/schemas -name '*.json' | sort)
((${#schema_files[@]} > 0)) || { echo "check-schemas: no schema in docs/schemas" >&2; exit 1; }
"$PYTHON" -m check_jsonschema --check-metaschema "${schema_files[@]}"

# 3. Every AsyncAPI document passes the AsyncAPI validator.
installed="$(cd "$NODE_TOOLS" 2>/dev/null && node -p 'require("@asyncapi/cli/package.json").version' 2>/dev/null || true)"
if [[ "$installed" != "$ASYNCAPI_CLI_VERSION" ]]; then
    echo "check-schemas: installing @asyncapi/cli@$ASYNCAPI_CLI_VERSION into $NODE_TOOLS"
    mkdir -p "$NODE_TOOLS"
    npm install --prefix "$NODE_TOOLS" --no-fund --no-audit --loglevel=error "@asyncapi/cli@$ASYNCAPI_CLI_VERSION" >/dev/null
fi
# No usage analytics sent, and no file written in the home directory: the CLI reads its
# analytics setting from here, and this one says disabled.
export ASYNCAPI_METRICS_CONFIG_PATH="$NODE_TOOLS/asyncapi-analytics.json"
echo '{"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "check-schemas"}' >"$ASYNCAPI_METRICS_CONFIG_PATH"
failed=0
for doc in docs/asyncapi/*.json; do
    if ! "$ASYNCAPI" validate "$doc" --fail-severity=warn >"$work/validate.log" 2>&1; then
        echo "check-schemas: $doc is not a valid AsyncAPI document:" >&2
        cat "$work/validate.log" >&2
        failed=1
    fi
done
((failed == 0))
echo "check-schemas: ${#schema_files[@]} event schemas and $(ls docs/asyncapi/*.json | wc -l) AsyncAPI documents valid and up to date"
