#!/usr/bin/env bash
# Re-vendor the terminal's browser assets from npm (versions pinned in package.json).
# The results in static/vendor/ are committed, so neither building nor running the
# daemon needs npm or network access.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$work/"
(cd "$work" && npm install --no-audit --no-fund --silent)
out="$here/static/vendor"
mkdir -p "$out"
cp "$work/node_modules/@xterm/xterm/lib/xterm.js" "$out/xterm.js"
cp "$work/node_modules/@xterm/xterm/css/xterm.css" "$out/xterm.css"
cp "$work/node_modules/@xterm/addon-fit/lib/addon-fit.js" "$out/addon-fit.js"
cp "$work/node_modules/@xterm/xterm/LICENSE" "$out/LICENSE.xterm.txt"
sed -i '/^\/\/# sourceMappingURL=/d' "$out"/*.js
echo "vendored into $out:"; ls -l "$out"
