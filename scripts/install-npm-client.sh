#!/usr/bin/env bash
# Install an npm client the end-to-end tests run against OpenMaaS, at the exact version
# scripts/<NAME>/package-lock.json pins, into .cache/npm/<NAME> (ignored by git), and print
# the path of its program. NAME is a folder of scripts/ with a package.json naming one
# dependency and, as "openmaasBin", the program it installs:
#
#   claude-code  Claude Code (tests/e2e/test_claude_code.py)
#   codex        Codex CLI (tests/e2e/test_codex_cli.py)
#
# `npm ci` checks every package against the lock's sha512. An install of the same lock
# file is reused. scripts/test-services.sh runs it for each (after installing npm where it
# is missing); the tests run it too when the program is not there yet.
set -euo pipefail

name="${1:?usage: install-npm-client.sh NAME (a folder of scripts/ with a package.json)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
pinned="$root/scripts/$name"
dest="$root/.cache/npm/$name"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-npm-client: npm is not installed (bash scripts/test-services.sh installs it as root)" >&2
    exit 1
fi
read -r package version program < <(node -e '
    const p = require(process.argv[1]);
    const [[name, version]] = Object.entries(p.dependencies);
    console.log(name, version, p.openmaasBin);
' "$pinned/package.json")
bin="$dest/node_modules/.bin/$program"

installed() {
    [ -x "$bin" ] && cmp -s "$pinned/package-lock.json" "$dest/package-lock.json" \
        && "$bin" --version 2>/dev/null | grep -qF "$version"
}

if ! installed; then
    echo "install-npm-client: installing $package@$version into .cache/npm/$name" >&2
    mkdir -p "$dest"
    cp "$pinned/package.json" "$pinned/package-lock.json" "$dest/"
    (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
    if ! "$bin" --version >/dev/null 2>&1 && [ -f "$dest/node_modules/$package/install.cjs" ]; then
        # An npm that skips install scripts leaves the package's placeholder in place of
        # the native binary; its own postinstall puts the binary there (Claude Code).
        (cd "$dest/node_modules/$package" && node install.cjs >&2)
    fi
    if ! installed; then
        echo "install-npm-client: $bin does not run as $package $version" >&2
        exit 1
    fi
fi
echo "$bin"
