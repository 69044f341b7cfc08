#!/bin/bash
# build-node-ric.sh - AWS's Node.js runtime interface client (npm `aws-lambda-ric`) with its native client built,
# for nodejs* functions (the local backend and the Node.js runtime image). The npm package ships sources only: its
# install script builds curl and aws-lambda-cpp, then the N-API addon, against this host's Node.js headers (no
# download: node-gyp is pointed at /usr). Cached in $OUT; prints the package's directory.
set -euo pipefail
VERSION=${RIC_VERSION:-3.3.0}  # 3.x runs on Node.js 18 and 20 (4.x needs 22)
OUT=${OUT:-/var/cache/kambda/node-ric-$VERSION}
RIC=$OUT/node_modules/aws-lambda-ric
if [ ! -f "$RIC/dist/rapid-client.node" ]; then
  missing=""
  for pc in node:nodejs npm:npm cmake:cmake g++:g++ make:make autoreconf:autoconf automake:automake libtoolize:libtool; do
    command -v "${pc%%:*}" >/dev/null 2>&1 || missing="$missing ${pc#*:}"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  nodedir=/usr
  [ -f /usr/include/node/node_api.h ] || { apt-get install -y -qq --no-install-recommends libnode-dev >/dev/null; }
  rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
  log=$(mktemp)
  # --foreground-scripts: npm 11 would otherwise skip or hide the build; nodedir: headers from the host's Node.js.
  if ! (cd "$OUT.tmp" && npm_config_nodedir=$nodedir npm install --no-audit --no-fund --foreground-scripts \
        --prefix "$OUT.tmp" "aws-lambda-ric@$VERSION") > "$log" 2>&1; then
    tail -40 "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  built=$(find "$OUT.tmp/node_modules/aws-lambda-ric" -name rapid-client.node | head -1)
  [ -n "$built" ] || { echo "aws-lambda-ric built no native client" >&2; exit 1; }
  [ -f "$OUT.tmp/node_modules/aws-lambda-ric/dist/rapid-client.node" ] || cp "$built" "$OUT.tmp/node_modules/aws-lambda-ric/dist/"
  # The build's leftovers (curl and aws-lambda-cpp sources, objects) are not needed to run it.
  rm -rf "$OUT.tmp/node_modules/aws-lambda-ric/deps" "$OUT.tmp/node_modules/aws-lambda-ric/build"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi
echo "$RIC"
