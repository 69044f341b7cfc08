#!/bin/bash
# images-local.sh - kambda's two images without Docker or a registry, imported into the test cluster's containerd:
#   localhost/kambda-runtime:TAG  function pods: Python, the agent (grpcio, protobuf, httptools), awslambdaric, curl
#   localhost/kambda:TAG          the gateway and the operator: `kambda[platform]` (aiohttp, kopf, nats, k8s client)
# Each is a Debian bookworm rootfs from debootstrap (cached per image kind) with the project installed from the
# working tree by the host's pip (`--target` the rootfs's dist-packages: same Python 3.11, same wheels; the rootfs
# needs no pip of its own), packed as a single-layer docker-archive. TAG is a digest of the sources, so an unchanged
# tree reuses the cached tarballs. Prints `runtime IMAGE` and `platform IMAGE`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S_CACHE=${K8S_CACHE:-/var/cache/k8s-test-cluster}
CACHE=$K8S_CACHE/images
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}
CTR="ctr --address ${CTRD_SOCK:-/run/lc-containerd/containerd.sock} -n k8s.io"
SITE=usr/local/lib/python3.11/dist-packages  # on Debian's sys.path; pip never touches it inside the image
mkdir -p "$CACHE"

cd "$ROOT"
TAG=$(find kambda gateway runtime operator pyproject.toml hack/images-local.sh -type f \
  \( -name '*.py' -o -name '*.proto' -o -name '*.toml' -o -name '*.sh' \) \
  -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)

base() { # base NAME PACKAGES -> a cached, trimmed debootstrap rootfs tarball
  local out=$CACHE/$1-base.tar root
  if [ ! -s "$out" ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    root=$(mktemp -d)
    debootstrap --variant=minbase --include="$2" bookworm "$root" "$DEBIAN_MIRROR" > "$CACHE/debootstrap-$1.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-$1.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
      "$root"/var/log/*.log
    tar -C "$root" -cf "$out.tmp" . && mv "$out.tmp" "$out"
    rm -rf "$root"
  fi
  echo "$out"
}

quiet() { # run a command, showing its output only if it fails
  local out; out=$(mktemp)
  "$@" > "$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; return 1; }
  rm -f "$out"
}

WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
build() { # build KIND IMAGE BASE_PACKAGES REQUIREMENT ENTRYPOINT_JSON
  local kind=$1 image=$2 out=$CACHE/$1-$TAG.tar rootfs
  if [ ! -s "$out" ]; then
    [ -n "$(ls "$WHEELS")" ] || quiet "$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$WHEELS" "$ROOT"
    rootfs=$(mktemp -d)
    tar -C "$rootfs" -xf "$(base "$kind" "$3")"
    mkdir -p "$rootfs/var/task" "$rootfs/$SITE"
    # The pods' uid has a name: getpass/pwd lookups (Kopf's peering identity, `id`) must not fail.
    echo "kambda:x:1000:1000:kambda:/nonexistent:/usr/sbin/nologin" >> "$rootfs/etc/passwd"
    echo "kambda:x:1000:" >> "$rootfs/etc/group"
    # pip's resolver warnings compare against the host's own environment, not the target: not ours to act on.
    quiet "$PYTHON" -m pip install -q --no-warn-script-location --target "$rootfs/$SITE" "$(ls "$WHEELS"/kambda-*.whl)$4"
    rm -rf "$rootfs/$SITE/bin"  # console scripts pointing at the host's interpreter; images use python3 -m
    bash "$ROOT/hack/test-cluster.sh" pack-rootfs "$rootfs" "$image" "$out.tmp" "$5"
    mv "$out.tmp" "$out"
    rm -rf "$rootfs"
    # Older builds of this kind are dead weight (a tarball is 100+ MB).
    find "$CACHE" -maxdepth 1 -regextype posix-extended -regex ".*/$kind-[0-9a-f]{12}\.tar" ! -name "$kind-$TAG.tar" -delete
  fi
  if $CTR version >/dev/null 2>&1; then
    $CTR images ls -q | grep -Fxq "$image" || $CTR images import "$out" >/dev/null
  fi
  echo "$kind $image $(stat -c %s "$out")"
}

# Function pods: the agent and the Python runtime interface client only (curl for `provided` shell bootstraps).
build kambda-runtime "localhost/kambda-runtime:$TAG" python3,curl,ca-certificates "[python-runtime]" \
  '["python3","-m","kambda.runtime.agent"]'
build kambda "localhost/kambda:$TAG" python3,ca-certificates "[platform]" '["python3","-m","kambda"]'
