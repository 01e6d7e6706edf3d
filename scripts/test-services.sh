#!/usr/bin/env bash
# Install what the test suite runs besides Python: the servers its fixtures start and stop on
# loopback (redis-server), npm with Claude Code and Codex CLI for their tests in tests/e2e,
# and Debian's Chromium with a Chinese font for the console's browser tests (Playwright
# drives /usr/bin/chromium; its own browser download is never used).
# redis-server, nodejs, npm and chromium come from Debian's packages when missing; the
# clients come from the npm registry at the exact versions scripts/claude-code/ and
# scripts/codex/ pin, into .cache/npm (scripts/install-npm-client.sh). `make test` runs this
# first.
#
# As root it installs what is missing (apt-get). Otherwise it says what to run; the tests
# that need it are then skipped, except under CI (CI set), where they fail: there a missing
# program is an error, and so is this script's failing to install it.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# the console's Chinese pages (and their screenshots) need a CJK font
[ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || missing+=(fonts-wqy-zenhei)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test-services: installing ${missing[*]} from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "test-services: ${missing[*]} not installed, and this script can install them" \
             "only as root with apt-get. Run: sudo apt-get update &&" \
             "sudo apt-get install -y ${missing[*]}" >&2
        if [ -n "${CI:-}" ]; then
            exit 1
        fi
        echo "test-services: the tests that need ${missing[*]} will be skipped" >&2
    fi
fi

if command -v npm >/dev/null 2>&1; then
    # Without the npm registry this fails: under CI that ends the run here; elsewhere the
    # client's test tries again and fails, saying why.
    for client in claude-code codex; do
        if ! bash "$(dirname "$0")/install-npm-client.sh" "$client" >/dev/null; then
            if [ -n "${CI:-}" ]; then
                exit 1
            fi
            echo "test-services: $client could not be installed; its test in tests/e2e will fail" >&2
        fi
    done
fi
