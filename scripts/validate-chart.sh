#!/usr/bin/env bash
# Checks the container image recipe and the Helm chart: hadolint, the chart's static checks, the config it
# renders (check-config), the dashboard and alerts against a running service's /metrics, and the rendered
# manifests (kubernetes-validate).
#
#   bash scripts/validate-chart.sh [--install] [pytest arguments...]
#
# Rendering uses `helm` when it is on PATH (then `helm lint` runs too).  Without helm, the tests build
# helm/tools/render (Go text/template + sprig, the engine Helm uses) from Debian packages; --install
# installs those packages with apt-get (as root).  Without either, the rendering tests are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" == "--install" ]]; then
    shift
    packages=(golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev)
    if ! command -v helm >/dev/null 2>&1 && ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
        sudo=()
        [[ $(id -u) -ne 0 ]] && sudo=(sudo -n)
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
    fi
fi

if command -v helm >/dev/null 2>&1; then
    echo "==> rendering with $(helm version --short 2>/dev/null || echo helm)" >&2
elif command -v go >/dev/null 2>&1 && [[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ]]; then
    echo "==> helm not found: rendering with the stand-in helm/tools/render (no helm lint)" >&2
else
    echo "==> neither helm nor the stand-in's build dependencies: rendering checks will be skipped" >&2
fi
exec "${PYTHON:-python}" -m pytest tests/test_deploy.py "$@"
