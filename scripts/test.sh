#!/usr/bin/env bash
# The project's test command: installs what the test-suite's real parts need, then runs pytest.
#
#   bash scripts/test.sh [pytest arguments...]
#
# Works on a fresh Debian 12 machine as root with Python 3.11 and pip:
#   1. apt packages: Debian's MediaWiki 1.39, PHP (CLI + extensions), ImageMagick, and Chromium for the
#      review-queue browser tests (driven by Playwright from PyPI, which never downloads a browser itself)
#      (skipped when dpkg already lists them all);
#   2. the project with its test extras (pip install -e '.[test]');
#   3. PostgreSQL installed if missing (trust auth on 127.0.0.1) and started if stopped;
#   4. ruff check service tests bench, and mypy on service/ (both must be clean);
#   5. python -m pytest "$@".  "No tests collected" (exit code 5) counts as a failure.
# Environment: PYTHON (default: python, else python3), SKIP_APT=1, SKIP_PIP=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }

if [[ -n "${PYTHON:-}" ]]; then
    python_bin=$PYTHON
elif command -v python >/dev/null 2>&1; then
    python_bin=python
else
    python_bin=python3
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    as_root=(sudo -n)
fi

apt_packages=(mediawiki php-cli php-sqlite3 php-intl php-mbstring php-xml php-gd imagemagick
    ghostscript poppler-utils  # PdfHandler: the test wiki renders PDF page thumbnails (issue 14)
    djvulibre-bin  # DjVuHandler: ddjvu/djvudump/djvutxt render DjVu pages for the test wiki; c44/djvm make test files
    pkg-config cmake libavcodec-dev libavformat-dev libavdevice-dev libavutil-dev libswscale-dev libswresample-dev
    libavfilter-dev  # the reference vpdq (test extra, built from its sdist) our vPDQ signatures are checked against
    golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev  # Go + sprig: the chart renderer
    chromium chromium-driver)  # the review-queue UI tests (Playwright drives /usr/bin/chromium)

# 1. System packages.
if [[ "${SKIP_APT:-0}" == 1 ]]; then
    say "SKIP_APT=1: not checking system packages"
elif dpkg -s "${apt_packages[@]}" >/dev/null 2>&1; then
    say "system packages present: ${apt_packages[*]}"
else
    say "installing system packages: ${apt_packages[*]}"
    if [[ ${#as_root[@]} -gt 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        say "FAILED: not root and no sudo; install them first or run as root: ${apt_packages[*]}"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    run "${as_root[@]}" apt-get update
    run "${as_root[@]}" apt-get install -y --no-install-recommends "${apt_packages[@]}"
fi

# 2. The project and its test dependencies.
if [[ "${SKIP_PIP:-0}" == 1 ]]; then
    say "SKIP_PIP=1: not installing the project"
else
    pip_args=(-e '.[test]')
    # Debian's own python refuses pip outside a virtualenv (PEP 668); a throw-away CI machine may override.
    if "$python_bin" - <<'EOF'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if (not in_venv and os.path.exists(marker)) else 1)
EOF
    then
        say "$python_bin is externally managed (PEP 668) and no virtualenv is active: using --break-system-packages"
        pip_args+=(--break-system-packages)
    fi
    say "installing the project with its test extras"
    run "$python_bin" -m pip install --disable-pip-version-check "${pip_args[@]}"
fi

# 3. PostgreSQL (the scale-out tests' store): installed from Debian when missing, with trust auth for
#    127.0.0.1 as the tests expect (MM_TEST_POSTGRES overrides the server they use); clusters that are
#    down are started.
if ! command -v pg_lsclusters >/dev/null 2>&1 && [[ "${SKIP_APT:-0}" != 1 ]]; then
    say "installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    run "${as_root[@]}" apt-get update
    run "${as_root[@]}" apt-get install -y --no-install-recommends postgresql
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
            # First match wins: put the test rule before Debian's password rules.
            run "${as_root[@]}" sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
            version=$(basename "$(dirname "$(dirname "$hba")")")
            "${as_root[@]}" pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
        fi
    done
fi
if command -v pg_lsclusters >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
    while read -r version cluster _port status _rest; do
        if [[ "$status" == down* ]]; then
            say "starting PostgreSQL cluster $version/$cluster"
            if ! run "${as_root[@]}" pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start; then
                say "WARNING: PostgreSQL $version/$cluster did not start; tests that need it will fail"
            fi
        else
            say "PostgreSQL cluster $version/$cluster is $status"
        fi
    done < <(pg_lsclusters --no-header)
else
    say "PostgreSQL is not installed: skipping"
fi

# 4. Lint and types: ruff on the code, tests and benchmarks; mypy on the service.
say "checking lint (ruff) and types (mypy)"
run "$python_bin" -m ruff check service tests bench
run "$python_bin" -m mypy

# 5. The tests.
say "running the tests"
set +e
run "$python_bin" -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    say "FAILED: pytest collected no tests (exit code 5)"
    exit 1
fi
if [[ $status -ne 0 ]]; then
    say "FAILED: pytest exited with $status"
else
    say "tests passed"
fi
exit "$status"
