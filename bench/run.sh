#!/usr/bin/env bash
# `make bench`: the benchmarks of bench/README.md, one after the other.
#
#   bench/run.sh                   both: the webhook ack, then Kommo outbound (defaults)
#   bench/run.sh ack [options]     the webhook ack only: python -m bench.webhook_ack [options]
#   bench/run.sh outbound [opts]   Kommo outbound only: python -m bench.kommo_outbound [opts]
#   bench/run.sh soak [opts]       the reliability soak (not part of `make bench`): bench/soak.py
#   bench/run.sh latency [opts]    webhook → n8n envelope latency: bench/envelope_latency.py
#   bench/run.sh slow-n8n [opts]   50 customers at once, n8n answering after 2 / 5 s: bench/slow_n8n.py
#   bench/run.sh kommo-burst [opts] 20 and 200 customers at once, Kommo at 7 req/s: bench/kommo_burst.py
#   bench/run.sh idle [opts]       the stack with no traffic for 60 s: CPU and Redis commands/s: bench/idle.py
#   bench/run.sh reports [opts]    GET /reports over 13 months × 50 vendedores: bench/reports_query.py
#   bench/run.sh --rounds 5 …      options without a name go to the ack, as they always did
#
# The ack needs wrk, which is installed from Debian's packages when missing.
set -euo pipefail

cd "$(dirname "$0")/.."

need_wrk() {
    if command -v wrk >/dev/null 2>&1; then
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ]; then
            as_root=()
        elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            as_root=()
        fi
        if [ "$(id -u)" -eq 0 ] || [ "${#as_root[@]}" -gt 0 ]; then
            echo "bench: wrk not found, installing it from Debian's packages" >&2
            # The package lists may be missing or stale on a fresh machine.
            "${as_root[@]}" apt-get update -qq
            DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq wrk >&2
        fi
    fi
    if ! command -v wrk >/dev/null 2>&1; then
        cat >&2 <<'MSG'
bench: wrk (the HTTP load generator) is needed and could not be installed here.
Install it, then run `make bench` again:
    Debian/Ubuntu:  sudo apt-get install -y wrk
    macOS:          brew install wrk
MSG
        exit 1
    fi
}

need_venv() {
    if [ ! -x .venv/bin/python ]; then
        echo "bench: no .venv here: run \`make bench\` (it creates the venv and generates the gRPC code)" >&2
        exit 1
    fi
}

ack() {
    need_wrk
    need_venv
    .venv/bin/python -m bench.webhook_ack "$@"
}

outbound() {
    need_venv
    .venv/bin/python -m bench.kommo_outbound "$@"
}

soak() {
    need_venv
    .venv/bin/python -m bench.soak "$@"
}

latency() {
    need_venv
    .venv/bin/python -m bench.envelope_latency "$@"
}

slow_n8n() {
    need_venv
    .venv/bin/python -m bench.slow_n8n "$@"
}

kommo_burst() {
    need_venv
    .venv/bin/python -m bench.kommo_burst "$@"
}

idle() {
    need_venv
    .venv/bin/python -m bench.idle "$@"
}

reports_query() {
    need_venv
    .venv/bin/python -m bench.reports_query "$@"
}

case "${1-}" in
    "")
        ack
        outbound
        ;;
    ack)
        shift
        ack "$@"
        ;;
    outbound)
        shift
        outbound "$@"
        ;;
    soak)
        shift
        soak "$@"
        ;;
    latency)
        shift
        latency "$@"
        ;;
    slow-n8n)
        shift
        slow_n8n "$@"
        ;;
    kommo-burst)
        shift
        kommo_burst "$@"
        ;;
    idle)
        shift
        idle "$@"
        ;;
    reports)
        shift
        reports_query "$@"
        ;;
    *)
        ack "$@"
        ;;
esac
