#!/bin/bash
# images-local.sh - the function runtime image (agent + awslambdaric + Python) without Docker or a registry:
# a Debian bookworm rootfs from debootstrap, the project installed from the working tree with the rootfs's own
# pip (wheels built on the host), packed as a docker-archive and imported into the test cluster's containerd.
# The tag is a digest of the project's sources, so an unchanged tree reuses the cached tarball. Prints the image.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S_CACHE=${K8S_CACHE:-/var/cache/k8s-test-cluster}
CACHE=$K8S_CACHE/images
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}
CTR="ctr --address ${CTRD_SOCK:-/run/lc-containerd/containerd.sock} -n k8s.io"
mkdir -p "$CACHE"

cd "$ROOT"
TAG=$(find kambda gateway runtime operator pyproject.toml -type f \( -name '*.py' -o -name '*.proto' -o -name '*.toml' \) \
  -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)
IMAGE=localhost/kambda-runtime:$TAG
OUT=$CACHE/kambda-runtime-$TAG.tar

if [ ! -s "$OUT" ]; then
  BASE=$CACHE/kambda-runtime-base.tar
  if [ ! -s "$BASE" ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    base_root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-pip,curl,ca-certificates bookworm "$base_root" \
      "$DEBIAN_MIRROR" > "$CACHE/debootstrap-runtime.log" 2>&1 || { tail -20 "$CACHE/debootstrap-runtime.log"; exit 1; }
    rm -rf "$base_root"/var/cache/apt/archives/*.deb "$base_root"/var/lib/apt/lists/* "$base_root"/usr/share/doc/* \
      "$base_root"/usr/share/man/* "$base_root"/usr/share/locale/*
    tar -C "$base_root" -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
    rm -rf "$base_root"
  fi
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  tar -C "$rootfs" -xf "$BASE"
  mkdir -p "$rootfs/tmp/wheels" "$rootfs/var/task"
  "$PYTHON" -m pip wheel -q --wheel-dir "$rootfs/tmp/wheels" "$ROOT" 2>&1 | grep -v "^WARNING: Location" || true
  chroot "$rootfs" python3 -m pip install -q --no-index --find-links /tmp/wheels --break-system-packages kambda
  rm -rf "$rootfs/tmp/wheels" "$rootfs/root/.cache"
  bash "$ROOT/hack/test-cluster.sh" pack-rootfs "$rootfs" "$IMAGE" "$OUT" '["python3","-m","kambda.runtime.agent"]'
fi
if $CTR version >/dev/null 2>&1; then
  $CTR images ls -q | grep -Fxq "$IMAGE" || $CTR images import "$OUT" >/dev/null
fi
echo "$IMAGE"
