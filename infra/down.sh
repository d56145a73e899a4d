#!/usr/bin/env bash
# Stops what infra/up.sh started (a server it merely reused is left alone). Data is kept.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rc=0
bash "$ROOT/infra/kafka.sh" stop || rc=1
bash "$ROOT/infra/postgres.sh" stop || rc=1
exit $rc
