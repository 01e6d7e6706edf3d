#!/usr/bin/env bash
# Install Claude Code (npm @anthropic-ai/claude-code) at the exact version that
# scripts/claude-code/package-lock.json pins, into .cache/npm (ignored by git), for
# tests/e2e/test_claude_code.py. `npm ci` checks every package against the lock's sha512.
# An install of the same lock file is reused; the script prints the path of `claude`.
#
# scripts/test-services.sh runs it (after installing npm where it is missing); the test
# runs it too when `claude` is not there yet.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
pinned="$root/scripts/claude-code"
dest="$root/.cache/npm"
bin="$dest/node_modules/.bin/claude"
package="$dest/node_modules/@anthropic-ai/claude-code"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-claude-code: npm is not installed (bash scripts/test-services.sh installs it as root)" >&2
    exit 1
fi
version="$(node -p 'require(process.argv[1]).dependencies["@anthropic-ai/claude-code"]' \
    "$pinned/package.json")"

installed() {
    [ -x "$bin" ] && cmp -s "$pinned/package-lock.json" "$dest/package-lock.json" \
        && "$bin" --version 2>/dev/null | grep -q "^$version "
}

if ! installed; then
    echo "install-claude-code: installing @anthropic-ai/claude-code@$version into .cache/npm" >&2
    mkdir -p "$dest"
    cp "$pinned/package.json" "$pinned/package-lock.json" "$dest/"
    (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
    if ! "$bin" --version >/dev/null 2>&1; then
        # An npm that skips install scripts leaves the package's placeholder in place of
        # the native binary; its own postinstall puts the binary there.
        (cd "$package" && node install.cjs >&2)
    fi
    if ! installed; then
        echo "install-claude-code: $bin does not run as Claude Code $version" >&2
        exit 1
    fi
fi
echo "$bin"
