#!/usr/bin/env bash
# Fetch the book's third-party JavaScript from the npm registry, by pinned version, into book/_vendor (ignored by git).
# Sphinx serves that folder as static files, so pages load the widget manager and MathJax from the book itself:
# no CDN, and the book works offline, even opened from file://.
#   - @jupyter-widgets/html-manager: renders the widget state stored in the notebooks (standalone embed.js bundle,
#     with its font files; it needs no require.js).
#   - mathjax 3: Sphinx's default MathJax major version, served locally.
set -euo pipefail
HTML_MANAGER_VERSION=1.0.15
MATHJAX_VERSION=3.2.2

dest="$(cd "$(dirname "$0")" && pwd)/_vendor"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" "mathjax@${MATHJAX_VERSION}" >/dev/null

rm -rf "$dest"
mkdir -p "$dest/html-manager" "$dest/mathjax"
tar xzf "jupyter-widgets-html-manager-${HTML_MANAGER_VERSION}.tgz" -C "$dest/html-manager" --strip-components=1 \
  --wildcards 'package/dist/embed.js' 'package/dist/*.woff2' 'package/dist/*.woff' 'package/dist/*.ttf' \
  'package/dist/*.eot' 'package/dist/*.svg' 'package/dist/embed.js.LICENSE.txt'
tar xzf "mathjax-${MATHJAX_VERSION}.tgz" -C "$dest/mathjax" --strip-components=1 \
  --wildcards 'package/es5/tex-chtml.js' 'package/es5/input/*' 'package/es5/output/chtml*' 'package/es5/a11y/*' \
  'package/es5/ui/*' 'package/es5/adaptors/*' 'package/LICENSE'
echo "html-manager ${HTML_MANAGER_VERSION} mathjax ${MATHJAX_VERSION}" > "$dest/VERSIONS"
