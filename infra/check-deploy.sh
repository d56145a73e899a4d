#!/usr/bin/env bash
# Renders the Kubernetes manifests (deploy/base) and checks them, the alert rules and the
# Grafana dashboard; exits non-zero on the first check that fails.
#
#   bash infra/check-deploy.sh
#
# 1. kustomize renders deploy/base (kubectl's built-in kustomize, else kustomize built with Go);
# 2. kubernetes-validate --strict checks every core manifest against the Kubernetes schemas of
#    each version in K8S_VERSIONS (unknown fields refused);
# 3. check-jsonschema checks the KEDA ScaledObjects and TriggerAuthentication against the CRDs'
#    own schemas (deploy/schemas/keda-*, made from KEDA's CRDs by infra/deploy_check.py);
# 4. infra/deploy_check.py consistency: what the platform promises of its manifests (a probe,
#    resources, a Service and a PodDisruptionBudget per Deployment, a ScaledObject on each
#    service's own consumer group with at most one replica per partition, secrets only by
#    reference, every service in the migration Job);
# 5. promtool (built with Go, when Go is here) checks and unit-tests the alert rules
#    (alerts.test.yml) and checks the scrape configuration; PROMTOOL=0 skips it;
# 6. infra/deploy_check.py metrics: every PromQL expression of the alerts and the dashboard
#    parses (promql-parser, the Rust parser) and names only metrics the code declares;
# 7. docker-compose.yml is valid against the Compose specification (no Docker engine needed).
#
# The tools are installed into .local/tools/deploy on the first run and reused (pinned below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.local/tools/deploy"
OUT="$ROOT/.local/deploy-check"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
KEDA_SCHEMAS="$ROOT/deploy/schemas/keda-2.20.2"
PYTHON_TOOLS=(
    kubernetes-validate==1.37.0
    check-jsonschema==0.39.0
    promql-parser==0.11.0
    pyyaml==6.0.3
    prometheus-client==0.26.0  # as in uv.lock: the metrics check imports shared/shared/metrics.py
)
KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
PROMTOOL_MODULE=github.com/prometheus/prometheus/cmd/promtool@v0.316.0  # Prometheus 3.16
PROMTOOL="${PROMTOOL:-1}"

step() { printf '\n== %s\n' "$*"; }

# --- tools ---------------------------------------------------------------------------------------
wanted="${PYTHON_TOOLS[*]}"
if [[ ! -x "$TOOLS/bin/python" ]] || [[ "$(cat "$TOOLS/.python-tools" 2>/dev/null)" != "$wanted" ]]; then
    step "installing ${PYTHON_TOOLS[*]} into $TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q --disable-pip-version-check "${PYTHON_TOOLS[@]}"
    echo "$wanted" >"$TOOLS/.python-tools"
fi
PY="$TOOLS/bin/python"

go_install() {  # module@version -> $TOOLS/bin, once
    local binary="$1" module="$2"
    if [[ ! -x "$TOOLS/bin/$binary" ]] || [[ "$(cat "$TOOLS/.$binary" 2>/dev/null)" != "$module" ]]; then
        step "building $module with $(go version | cut -d' ' -f3) (once; cached in $TOOLS/bin)"
        GOBIN="$TOOLS/bin" GOFLAGS=-buildvcs=false go install "$module"
        echo "$module" >"$TOOLS/.$binary"
    fi
}

render() {
    if command -v kubectl >/dev/null; then
        kubectl kustomize "$ROOT/deploy/base"
    elif command -v go >/dev/null; then
        go_install kustomize "$KUSTOMIZE_MODULE" >&2
        "$TOOLS/bin/kustomize" build "$ROOT/deploy/base"
    else
        echo "check-deploy: neither kubectl nor Go is installed: cannot render deploy/base" >&2
        return 1
    fi
}

# --- 1. render -------------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
step "rendering deploy/base"
render >"$OUT/rendered.yaml"
"$PY" "$ROOT/infra/deploy_check.py" split "$OUT/rendered.yaml" "$OUT/split"
echo "rendered $(grep -c '^kind:' "$OUT/rendered.yaml") manifests into $OUT/rendered.yaml"

# --- 2. Kubernetes schemas -------------------------------------------------------------------
for version in $K8S_VERSIONS; do
    step "kubernetes-validate --strict, Kubernetes $version"
    "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$version" "$OUT"/split/core/*.yaml
    echo "$(ls "$OUT"/split/core | wc -l) core manifests valid"
done

# --- 3. KEDA schemas -------------------------------------------------------------------------
step "check-jsonschema: KEDA ScaledObject and TriggerAuthentication"
"$TOOLS/bin/check-jsonschema" --schemafile "$KEDA_SCHEMAS/scaledobject.json" "$OUT"/split/ScaledObject/*.yaml
"$TOOLS/bin/check-jsonschema" --schemafile "$KEDA_SCHEMAS/triggerauthentication.json" \
    "$OUT"/split/TriggerAuthentication/*.yaml

# --- 4. what the platform promises ---------------------------------------------------------------
step "manifests: probes, resources, budgets, scaling, secrets, migrations"
"$PY" "$ROOT/infra/deploy_check.py" consistency "$OUT/rendered.yaml"

# --- 5. promtool -----------------------------------------------------------------------------
if [[ "$PROMTOOL" != 0 ]] && command -v go >/dev/null; then
    go_install promtool "$PROMTOOL_MODULE"
    step "promtool: rules, rule tests, scrape configuration"
    "$TOOLS/bin/promtool" check rules "$ROOT/deploy/prometheus/alerts.yml"
    "$TOOLS/bin/promtool" test rules "$ROOT/deploy/prometheus/alerts.test.yml"
    "$TOOLS/bin/promtool" check config --syntax-only "$ROOT/deploy/prometheus/prometheus.yml"
else
    step "promtool skipped (PROMTOOL=0 or no Go): the PromQL parse below still runs"
fi

# --- 6. PromQL and metric names --------------------------------------------------------------
step "alerts and dashboard: PromQL parses, every metric is declared in shared/shared/metrics.py"
"$PY" "$ROOT/infra/deploy_check.py" metrics "$ROOT/deploy/prometheus/alerts.yml" "$ROOT/deploy/grafana/cancellations.json"

step "docker-compose.yml against the Compose specification (check-jsonschema's vendored schema)"
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/docker-compose.yml"

step "deploy, alerts, dashboard and compose: all checks passed"
