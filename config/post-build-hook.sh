#!/bin/sh
# Nix post-build-hook: uploads every store path Nix has just built to narwhal.
#
# In /etc/nix/nix.conf (or nix.settings on NixOS):
#   post-build-hook = /etc/nix/narwhal-upload.sh        # this file, executable
#   netrc-file = /etc/nix/netrc                          # machine narwhal.example password <token>
# The token needs `write` (and `read` when narwhal runs with --cache-require-read-token). The
# cache's URL comes from NARWHAL_URL in the environment, else the default below.
#
# Nix waits for the hook before it builds on: a slow or unreachable cache slows builds down, and a
# failing hook fails the build. Keep the cache close, or queue uploads instead.
set -eu
set -f # $OUT_PATHS is a space-separated list of store paths: no globbing
export IFS=' '
url=${NARWHAL_URL:-http://narwhal.example:8501}
paths=${OUT_PATHS:-}
# Nix 2.8 without a daemon leaves OUT_PATHS empty: ask the store for the outputs instead.
[ -n "$paths" ] || paths=$(nix-store --query --outputs "$DRV_PATH")
echo "uploading to $url: $paths" >&2
exec nix copy --to "$url" $paths
