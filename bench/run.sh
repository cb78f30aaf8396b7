#!/usr/bin/env bash
# `make bench`: the webhook ack benchmark (bench/README.md). Needs wrk, which it installs
# from Debian's packages when missing; extra arguments go to `python -m bench.webhook_ack`.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
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
fi

if [ ! -x .venv/bin/python ]; then
    echo "bench: no .venv here: run \`make bench\` (it creates the venv and generates the gRPC code)" >&2
    exit 1
fi

exec .venv/bin/python -m bench.webhook_ack "$@"
