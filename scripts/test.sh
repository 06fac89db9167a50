#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, HTTP and end-to-end tests, and
# the smoke modes of the benchmark, the Web API benchmark and the soak; then fails if any process it
# started is still running (scripts/leftover-processes). Installs the Debian packages
# the tests drive (promtool, Prometheus, Alertmanager, docker-compose, wrk, curl, GNU time, kubectl,
# python3-venv, Caddy, busybox) when they are missing, and kubernetes-validate and checkov from
# PyPI into target/kubernetes-validate and target/checkov.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every process of the run carries this marker (tests/common/process.rs also sets it on each child
# a test starts): whatever outlives the run is named, stopped, and fails it, pass or fail.
NUKI_TEST_CHECKOUT=$(pwd -P)
export NUKI_TEST_CHECKOUT
check_leftovers() {
  local status=$?
  scripts/leftover-processes --kill || status=1
  exit "$status"
}
trap check_leftovers EXIT

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have promtool && have prometheus || missing+=(prometheus)
have prometheus-alertmanager && have amtool || missing+=(prometheus-alertmanager)
have docker-compose || missing+=(docker-compose)
have wrk || missing+=(wrk)
have curl || missing+=(curl)
[ -x /usr/bin/time ] || missing+=(time)
# kubectl kustomize renders deploy/kubernetes (needs kubectl 1.21+, kustomize v4+).
have kubectl || missing+=(kubernetes-client)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# The compose stack's TLS front (caddy validate, a real Caddy in front of the exporter) and its
# preflight check (busybox sh, as in the container; setpriv runs it as nobody).
have caddy || missing+=(caddy)
have busybox || missing+=(busybox)
have setpriv || missing+=(util-linux)
# tests/status_page.rs reads the status page in a real headless browser.
have chromium || missing+=(chromium)
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tests/kubernetes.rs validates every rendered object against the Kubernetes schemas.
KUBERNETES_VALIDATE_VERSION=1.37.0
validate=target/kubernetes-validate/bin/kubernetes-validate
if ! "$validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
  python3 -m venv target/kubernetes-validate
  target/kubernetes-validate/bin/pip install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# tests/kubernetes.rs scans every rendered object with checkov (a policy scanner).
CHECKOV_VERSION=3.3.30
checkov=target/checkov/bin/checkov
if ! "$checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  python3 -m venv target/checkov
  target/checkov/bin/pip install -q "checkov==$CHECKOV_VERSION"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
bench/run --smoke
bench/web_api --smoke
bench/soak --smoke
