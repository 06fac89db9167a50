#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property, HTTP and end-to-end tests, and
# the smoke modes of the benchmark, the Web API benchmark and the soak. Installs the Debian packages the tests drive (promtool,
# Prometheus, Alertmanager, docker-compose, wrk, curl, GNU time) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have promtool && have prometheus || missing+=(prometheus)
have prometheus-alertmanager && have amtool || missing+=(prometheus-alertmanager)
have docker-compose || missing+=(docker-compose)
have wrk || missing+=(wrk)
have curl || missing+=(curl)
[ -x /usr/bin/time ] || missing+=(time)
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
bench/run --smoke
bench/web_api --smoke
bench/soak --smoke
