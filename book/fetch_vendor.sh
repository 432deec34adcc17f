#!/usr/bin/env bash
# Fetch the book's third-party assets from the npm registry, by pinned version, into book/_vendor (ignored by git).
# Sphinx serves that folder as static files, so pages load the widget manager, MathJax and the Chinese font from the
# book itself: no CDN, and the book works offline, even opened from file://.
#   - @jupyter-widgets/html-manager: renders the widget state stored in the notebooks (standalone embed.js bundle,
#     with its font files; it needs no require.js).
#   - mathjax 3: Sphinx's default MathJax major version, served locally.
#   - @expo-google-fonts/noto-sans-sc: Google Fonts' Noto Sans SC (regular and bold TrueType files; SIL Open Font
#     License 1.1, kept as _vendor/cjk/OFL.txt). The full fonts (10 MB each) go to book/_fonts (ignored by git, not
#     served); `make` cuts them down to the CJK characters the book's pages use (tools/subset_cjk_font.py, a few KB
#     in _vendor/cjk) and redoes that whenever a page changes, so pages show Chinese even where no Chinese font is
#     installed.
set -euo pipefail
HTML_MANAGER_VERSION=1.0.15
MATHJAX_VERSION=3.2.2
NOTO_SANS_SC_VERSION=0.4.3

book="$(cd "$(dirname "$0")" && pwd)"
dest="$book/_vendor"
fonts="$book/_fonts"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" "mathjax@${MATHJAX_VERSION}" \
  "@expo-google-fonts/noto-sans-sc@${NOTO_SANS_SC_VERSION}" >/dev/null

rm -rf "$dest" "$fonts"
mkdir -p "$dest/html-manager" "$dest/mathjax" "$dest/cjk" "$fonts"
tar xzf "jupyter-widgets-html-manager-${HTML_MANAGER_VERSION}.tgz" -C "$dest/html-manager" --strip-components=1 \
  --wildcards 'package/dist/embed.js' 'package/dist/*.woff2' 'package/dist/*.woff' 'package/dist/*.ttf' \
  'package/dist/*.eot' 'package/dist/*.svg' 'package/dist/embed.js.LICENSE.txt'
tar xzf "mathjax-${MATHJAX_VERSION}.tgz" -C "$dest/mathjax" --strip-components=1 \
  --wildcards 'package/es5/tex-chtml.js' 'package/es5/input/*' 'package/es5/output/chtml*' 'package/es5/a11y/*' \
  'package/es5/ui/*' 'package/es5/adaptors/*' 'package/LICENSE'
noto="expo-google-fonts-noto-sans-sc-${NOTO_SANS_SC_VERSION}.tgz"
tar xzf "$noto" -C "$fonts" --strip-components=2 \
  'package/400Regular/NotoSansSC_400Regular.ttf' 'package/700Bold/NotoSansSC_700Bold.ttf'
tar xzf "$noto" -O 'package/LICENSE_FONT' > "$dest/cjk/OFL.txt"
cp "$dest/cjk/OFL.txt" "$fonts/OFL.txt"
echo "html-manager ${HTML_MANAGER_VERSION} mathjax ${MATHJAX_VERSION} noto-sans-sc ${NOTO_SANS_SC_VERSION}" \
  > "$dest/VERSIONS"
