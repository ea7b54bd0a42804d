#!/usr/bin/env bash
# System packages swag needs on Debian/Ubuntu, installed only when missing (idempotent):
#   wordnet-base, wordnet-sense-index: WordNet 3.0 for nltk (unless nltk already has WordNet);
#   with --test also chromium: the test that renders the fairness report headless.
set -euo pipefail
want=(wordnet-base wordnet-sense-index)
[ "${1:-}" = "--test" ] && want+=(chromium)
need=()
for pkg in "${want[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "swag: please install ${need[*]} (WordNet 3.0 or nltk's wordnet corpus; chromium for tests)" >&2; exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed ${need[*]}"
