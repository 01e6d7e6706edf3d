#!/usr/bin/env bash
# Install the servers the test suite starts on loopback (its fixtures start and stop them):
# redis-server, from Debian's packages, when it is not on PATH. `make test` runs this first.
#
# As root it installs what is missing (apt-get). Otherwise it says what to run; the tests
# that need the server are then skipped, except under CI (CI set), where they fail: there a
# missing server is an error, and so is this script's failing to install it.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-services: installing ${missing[*]} from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    exit 0
fi

echo "test-services: ${missing[*]} not installed, and this script can install it only as root" \
     "with apt-get. Run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
if [ -n "${CI:-}" ]; then
    exit 1
fi
echo "test-services: the tests that need ${missing[*]} will be skipped" >&2
