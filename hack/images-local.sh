#!/bin/bash
# images-local.sh - kambda's images without Docker or a registry, imported into the test cluster's containerd:
#   localhost/kambda-runtime:TAG  python3.11 and provided* function pods: bookworm's Python 3.11, the agent (grpcio,
#                                 protobuf, httptools), curl, and in /var/runtime what Lambda provides Python
#                                 functions (awslambdaric, boto3) - the only packages a function's `python -S` sees
#   localhost/kambda-runtime-python3.13:TAG  python3.13 function pods: the same on Debian trixie's Python 3.13
#   localhost/kambda-runtime-nodejs:TAG  nodejs20.x function pods: Debian trixie's Node.js 20, AWS's aws-lambda-ric
#                                 (its native client built by hack/build-node-ric.sh), the agent on trixie's Python
#   localhost/kambda:TAG          the gateway and the operator: `kambda[platform]` (aiohttp, kopf, nats, k8s client)
# Each is a Debian bookworm rootfs from debootstrap (cached per image kind) with the project installed from the
# working tree by the host's pip (`--target` the rootfs's dist-packages: same Python 3.11, same wheels; the rootfs
# needs no pip of its own), packed as a single-layer docker-archive. TAG is a digest of the sources, so an unchanged
# tree reuses the cached tarballs. Prints one line per image: KIND IMAGE BYTES.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S_CACHE=${K8S_CACHE:-/var/cache/k8s-test-cluster}
CACHE=$K8S_CACHE/images
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}
CTR="ctr --address ${CTRD_SOCK:-/run/lc-containerd/containerd.sock} -n k8s.io"
mkdir -p "$CACHE"

cd "$ROOT"
TAG=$(find kambda gateway runtime operator pyproject.toml hack/images-local.sh hack/build-node-ric.sh -type f \
  \( -name '*.py' -o -name '*.proto' -o -name '*.toml' -o -name '*.sh' \) \
  -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)

base() { # base NAME PACKAGES [SUITE] -> a cached, trimmed debootstrap rootfs tarball
  local out=$CACHE/$1-base.tar root suite=${3:-bookworm}
  # Rebuilt when its package list changes: adding a package to an image must not reuse an older base without it.
  if [ ! -s "$out" ] || [ "$(cat "$out.packages" 2>/dev/null)" != "$2 $suite" ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    root=$(mktemp -d)
    debootstrap --variant=minbase --include="$2" "$suite" "$root" "$DEBIAN_MIRROR" > "$CACHE/debootstrap-$1.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-$1.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
      "$root"/var/log/*.log
    tar -C "$root" -cf "$out.tmp" . && mv "$out.tmp" "$out"
    echo "$2 $suite" > "$out.packages"
    rm -rf "$root"
  fi
  echo "$out"
}

quiet() { # run a command, showing its output only if it fails
  local out; out=$(mktemp)
  "$@" > "$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; return 1; }
  rm -f "$out"
}

compile_python() { # compile_python ROOTFS PY_VERSION SITE [RUNTIME_SITE]: every module's pyc, valid in the image
  # The layer is packed with every mtime 0 (test-cluster.sh mkimage: reproducible), which made every timestamp-based
  # pyc stale: each Python process of a pod (the agent, every runtime) recompiled all it imported (~200 ms for
  # awslambdaric) on a read-only root that cannot keep the result. Hash-based pycs that are not checked against
  # their source (PEP 552 unchecked-hash) are right for an image, whose sources never change; compiled by the
  # image's own interpreter, so a trixie image gets its Python 3.13's pycs.
  local rootfs=$1 py=$2 dirs=() d
  for d in usr/lib/python3 "usr/lib/python$py" "$3" ${4:+"$4"}; do [ -d "$rootfs/$d" ] && dirs+=("/$d"); done
  # A file that is not valid Python for this version (a package's test data) is skipped; the check below is what
  # must hold.
  chroot "$rootfs" "/usr/bin/python$py" -m compileall -q -f -j0 --invalidation-mode unchecked-hash "${dirs[@]}" \
    > /dev/null 2>&1 || true
  "$PYTHON" - "$rootfs/$3/kambda/runtime/agent/__pycache__" "$py" <<'PY'
import pathlib, sys
pyc = pathlib.Path(sys.argv[1]) / f"main.cpython-{sys.argv[2].replace('.', '')}.pyc"
flags = int.from_bytes(pyc.read_bytes()[4:8], "little") if pyc.exists() else -1
sys.exit(0 if flags == 1 else f"{pyc}: not an unchecked-hash pyc (flags {flags})")
PY
}

WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
# What Lambda provides a Python function (pyproject's `python-runtime` extra, defined there once).
PROVIDED=$("$PYTHON" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["python-runtime"]))')

build() { # build KIND IMAGE BASE_PACKAGES REQUIREMENT ENTRYPOINT_JSON [SUITE PYTHON_VERSION RUNTIME_SITE]
  local kind=$1 image=$2 out=$CACHE/$1-$TAG.tar rootfs suite=${6:-bookworm} py=${7:-3.11} runtime_site=${8:-} site target=()
  # On Debian's sys.path, and never touched by a pip inside the image (there is none).
  site=usr/local/lib/python$py/dist-packages
  # Another Python than the host's: the wheels for that version and this platform, binary only.
  [ "$py" = 3.11 ] || target=(--python-version "$py" --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --implementation cp)
  if [ ! -s "$out" ]; then
    [ -n "$(ls "$WHEELS")" ] || quiet "$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$WHEELS" "$ROOT"
    rootfs=$(mktemp -d)
    tar -C "$rootfs" -xf "$(base "$kind" "$3" "$suite")"
    mkdir -p "$rootfs/var/task" "$rootfs/$site"
    # The pods' uid has a name: getpass/pwd lookups (Kopf's peering identity, `id`) must not fail.
    echo "kambda:x:1000:1000:kambda:/nonexistent:/usr/sbin/nologin" >> "$rootfs/etc/passwd"
    echo "kambda:x:1000:" >> "$rootfs/etc/group"
    # pip's resolver warnings compare against the host's own environment, not the target: not ours to act on.
    quiet "$PYTHON" -m pip install -q --no-warn-script-location "${target[@]}" --target "$rootfs/$site" \
      "$(ls "$WHEELS"/kambda-*.whl)$4"
    if [ -n "$runtime_site" ]; then
      # shellcheck disable=SC2086  # PROVIDED is a list of requirements
      quiet "$PYTHON" -m pip install -q --no-warn-script-location "${target[@]}" --target "$rootfs/$runtime_site" $PROVIDED
      rm -rf "$rootfs/$runtime_site/bin"
    fi
    rm -rf "$rootfs/$site/bin"  # console scripts pointing at the host's interpreter; images use python3 -m
    if [ -n "${NODE_RIC:-}" ] && [ "$kind" = kambda-runtime-nodejs ]; then
      mkdir -p "$rootfs/usr/local/lib/kambda-node/node_modules"
      cp -a "$NODE_RIC" "$rootfs/usr/local/lib/kambda-node/node_modules/aws-lambda-ric"
    fi
    compile_python "$rootfs" "$py" "$site" "$runtime_site"
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

# Function pods: the agent, and apart from it (/var/runtime) what Lambda provides; curl for `provided` bootstraps.
build kambda-runtime "localhost/kambda-runtime:$TAG" python3,curl,ca-certificates "" \
  '["python3","-m","kambda.runtime.agent"]' bookworm 3.11 var/runtime
build kambda-runtime-python3.13 "localhost/kambda-runtime-python3.13:$TAG" python3,curl,ca-certificates "" \
  '["python3","-m","kambda.runtime.agent"]' trixie 3.13 var/runtime
# nodejs20.x: Debian trixie's Node.js 20 (bookworm has 18) and AWS's unmodified client; the agent runs on trixie's
# Python 3.13. Its pods need no Python client, so the bare distribution (the agent) is all that is installed.
NODE_RIC=$(bash "$ROOT/hack/build-node-ric.sh")
NODE_RIC=$NODE_RIC build kambda-runtime-nodejs "localhost/kambda-runtime-nodejs:$TAG" python3,nodejs,ca-certificates \
  "" '["python3","-m","kambda.runtime.agent"]' trixie 3.13
# nats-server: the NATS JetStream a test installation of several replicas runs its queue on (tests/install.py).
build kambda "localhost/kambda:$TAG" python3,ca-certificates,nats-server "[platform]" '["python3","-m","kambda"]'
