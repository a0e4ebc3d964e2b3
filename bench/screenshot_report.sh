#!/usr/bin/env bash
# Screenshot a report.html with headless Chromium, to check its layout by eye.
#
#   bench/screenshot_report.sh results/my-sweep/report/report.html [out.png] [width,height]
#
# Needs a Chromium: Debian/Ubuntu `apt-get install chromium` (binary `chromium`), or
# `chromium-browser`, `google-chrome`, or Playwright's (`pip install playwright && playwright install
# chromium`, then set CHROMIUM=~/.cache/ms-playwright/chromium-*/chrome-linux/chrome). The build machine
# of this repo has none, so tests/test_report.py skips its screenshot test there.
#
# The command it runs (Debian's chromium):
#   chromium --headless --disable-gpu --no-sandbox --hide-scrollbars \
#            --screenshot=out.png --window-size=1400,4000 file:///abs/path/report.html
# (--no-sandbox only because containers usually run as root; drop it on a desktop.)
set -euo pipefail

html=${1:?usage: $0 path/to/report.html [out.png] [width,height]}
out=${2:-${html%.html}.png}
size=${3:-1400,4000}

browser=${CHROMIUM:-}
if [[ -z "$browser" ]]; then
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$b" >/dev/null; then browser=$b; break; fi
  done
fi
if [[ -z "$browser" ]]; then
  echo "no Chromium found (tried chromium, chromium-browser, google-chrome; or set CHROMIUM=/path/to/chrome)" >&2
  exit 2
fi

abs=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
"$browser" --headless --disable-gpu --no-sandbox --hide-scrollbars \
  --screenshot="$out" --window-size="$size" "file://$abs"
echo "wrote $out"
