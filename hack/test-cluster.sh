#!/bin/bash
# test-cluster.sh - a real Kubernetes 1.20 for kambda's tests, from Debian packages + binaries built from Debian's
# `kubernetes` source package by hack/build-k8s.sh. No registry, no internet: images are built locally and imported
# into containerd. Adapted from the team's reference recipe (shared/k8s-test-cluster).
#
#   WITH_NODE=0 test-cluster.sh up   # control plane only: etcd + kube-apiserver + controller-manager + scheduler
#   test-cluster.sh up        # bring everything up (idempotent: running parts are kept)
#   local-cluster.sh smoke     # Deployment of python3 -m http.server, curl pod IP + ClusterIP, scale 0 -> 2
#   local-cluster.sh import-rootfs DIR NAME:TAG ['["cmd","arg"]']   # pack a rootfs dir as an image, import it
#   local-cluster.sh status
#   local-cluster.sh down [--purge]   # same as local-cluster-down.sh
#
# After `up`:  export KUBECONFIG=$LC_DIR/admin.kubeconfig
# Must run as root. Tested on Debian 12 (bookworm), cgroup v1, kernel 6.x.
set -euo pipefail

# ---------------------------------------------------------------- settings (env overridable)
K8S_CACHE=${K8S_CACHE:-/var/cache/k8s-test-cluster}           # where build-k8s.sh put the binaries and source
K8S_BIN=${K8S_BIN:-$K8S_CACHE/bin}
K8S_SRC=${K8S_SRC:-$(ls -d "$K8S_CACHE"/src/kubernetes-*/ 2>/dev/null | head -1)}
LC_DIR=${LC_DIR:-/tmp/kambda-test-cluster}                 # config, pki, etcd data, logs, pids, image cache
IMAGE_CACHE_DIR=${IMAGE_CACHE_DIR:-$K8S_CACHE/images} # pause.tar / python3.tar (cache this dir in CI)
KUBELET_ROOT=${KUBELET_ROOT:-/var/lib/lc-kubelet}
CTRD_ROOT=${CTRD_ROOT:-/var/lib/lc-containerd}
CTRD_STATE=${CTRD_STATE:-/run/lc-containerd}
CTRD_SOCK=$CTRD_STATE/containerd.sock
ETCD_CLIENT_PORT=${ETCD_CLIENT_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
APISERVER_PORT=${APISERVER_PORT:-6443}
# With a node, pods (the in-cluster operator and gateway) reach the API server through the `kubernetes` Service,
# whose endpoint is NODE_IP: bind every address then (token auth + RBAC still guard it).
if [ "${WITH_NODE:-1}" = 1 ]; then APISERVER_BIND=${APISERVER_BIND:-0.0.0.0}; else APISERVER_BIND=${APISERVER_BIND:-127.0.0.1}; fi
POD_CIDR=${POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/16}
WITH_NODE=${WITH_NODE:-1}                          # 0: no containerd/kubelet/kube-proxy (API-level tests)
WITH_KUBE_PROXY=${WITH_KUBE_PROXY:-$WITH_NODE}
INSTALL_DEPS=${INSTALL_DEPS:-1}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}  # the configured Debian archive
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/pause:3.4}
PY_IMAGE=${PY_IMAGE:-localhost/python3:3.11-bookworm}
NODE_NAME=${NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
if [ -z "${NODE_IP:-}" ]; then
  dev=$(ip -4 route show default 2>/dev/null | awk '{for(i=1;i<=NF;i++) if($i=="dev"){print $(i+1); exit}}')
  NODE_IP=$(ip -4 -o addr show ${dev:+dev "$dev"} scope global | awk '{split($4,a,"/"); print a[1]; exit}')
fi
# The in-tree AWS ECR credential provider in kubelet 1.20 otherwise probes http://169.254.169.254 at start.
export AWS_EC2_METADATA_DISABLED=true

PKI=$LC_DIR/pki; LOGS=$LC_DIR/logs; PIDS=$LC_DIR/pids
KCFG=$LC_DIR/admin.kubeconfig
CTR="ctr --address $CTRD_SOCK -n k8s.io"
T0=$(date +%s.%N)

log()  { printf '[%6.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*" | tee -a "$LC_DIR/timings.txt"; }
die()  { echo "ERROR: $*" >&2; exit 1; }
wait_for() { # wait_for SECONDS DESCRIPTION LOGFILE -- command...
  local t=$1 what=$2 logf=$3; shift 4; local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "timeout waiting for $what; last log lines:" >&2; tail -20 "$logf" >&2 || true; exit 1; fi
    sleep 0.2
  done
}
alive() { # alive NAME -> pid file exists and the process is still the one we started
  local f=$PIDS/$1.pid; [ -s "$f" ] || return 1; local p; p=$(cat "$f")
  kill -0 "$p" 2>/dev/null && tr '\0' ' ' < /proc/"$p"/cmdline 2>/dev/null | grep -F -- "$2" >/dev/null
}
start_bg() { # start_bg NAME BINARY ARGS... (logs to $LOGS/NAME.log, pid to $PIDS/NAME.pid)
  local name=$1; shift
  nohup "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
}
KUBECTL=${KUBECTL:-$( [ -x "$K8S_BIN/kubectl" ] && echo "$K8S_BIN/kubectl" || command -v kubectl || true)}
kc() { "$KUBECTL" --kubeconfig "$KCFG" "$@"; }

# ---------------------------------------------------------------- image helpers
mkimage() { # mkimage ROOTFS NAME:TAG OUT.tar ENTRYPOINT_JSON CMD_JSON [WORKDIR] -> single-layer docker-archive
  local rootfs=$1 ref=$2 out=$3 entry=${4:-null} cmd=${5:-null} workdir=${6:-/} work lsha csha
  work=$(mktemp -d)
  tar --numeric-owner --sort=name --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  lsha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  mkdir "$work/$lsha"; mv "$work/layer.tar" "$work/$lsha/layer.tar"
  cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":$entry,"Cmd":$cmd,"WorkingDir":"$workdir"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$lsha"]},
 "history":[{"created":"1970-01-01T00:00:00Z","created_by":"local-cluster.sh mkimage"}]}
JSON
  csha=$(sha256sum "$work/config.json" | cut -d' ' -f1); mv "$work/config.json" "$work/$csha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$csha" "$ref" "$lsha" > "$work/manifest.json"
  tar -C "$work" -cf "$out.tmp" manifest.json "$csha.json" "$lsha" && mv "$out.tmp" "$out"
  rm -rf "$work"
}
has_image() { $CTR images ls -q 2>/dev/null | grep -Fx -- "$1" >/dev/null; }

build_pause_image() {
  local d=$IMAGE_CACHE_DIR/pauseroot src=$K8S_SRC/build/pause/linux/pause.c
  mkdir -p "$d"
  if [ ! -f "$src" ]; then  # minimal fallback with the same behaviour (reap zombies, exit on TERM/INT)
    src=$IMAGE_CACHE_DIR/pause.c
    cat > "$src" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int s) { (void)s; _exit(0); }
static void sigreap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0); }
int main(void) {
  struct sigaction a = {0}; a.sa_handler = sigdown; sigaction(SIGINT, &a, 0); sigaction(SIGTERM, &a, 0);
  a.sa_handler = sigreap; a.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &a, 0);
  for (;;) pause();
}
EOF
  fi
  gcc -Os -Wall -static -DVERSION=v3.4-local -o "$d/pause" "$src"; strip "$d/pause"
  mkimage "$d" "$PAUSE_IMAGE" "$IMAGE_CACHE_DIR/pause.tar" '["/pause"]' null
}
build_python_image() {
  local r=$IMAGE_CACHE_DIR/pyroot
  rm -rf "$r"
  debootstrap --variant=minbase --include=python3 bookworm "$r" "$DEBIAN_MIRROR" > "$LOGS/debootstrap.log" 2>&1 \
    || { tail -20 "$LOGS/debootstrap.log"; die "debootstrap failed"; }
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
         "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/locale/* "$r"/usr/share/info/* "$r"/var/log/*.log
  mkimage "$r" "$PY_IMAGE" "$IMAGE_CACHE_DIR/python3.tar" null '["python3"]'
  rm -rf "$r"
}

# ---------------------------------------------------------------- up
cmd_up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  mkdir -p "$LC_DIR" "$PKI" "$LOGS" "$PIDS" "$IMAGE_CACHE_DIR" "$LC_DIR/cni/net.d" "$LC_DIR/volume-plugins"
  : > "$LC_DIR/timings.txt"
  log "up: node=$NODE_NAME ip=$NODE_IP bin=$K8S_BIN dir=$LC_DIR"
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$K8S_BIN/$b" ] || die "$K8S_BIN/$b missing (build it first)"; done
  [ -n "$NODE_IP" ] || die "cannot detect NODE_IP; set it"

  # 1. Debian packages
  local pkgs="" c
  local wanted="etcd:etcd-server curl:curl python3:python3-minimal openssl:openssl"
  [ "$WITH_NODE" = 1 ] && wanted="$wanted containerd:containerd runc:runc debootstrap:debootstrap gcc:gcc \
    iptables:iptables conntrack:conntrack socat:socat"
  for c in $wanted; do
    command -v "${c%%:*}" >/dev/null || pkgs="$pkgs ${c#*:}"; done
  if [ "$WITH_NODE" = 1 ]; then
    [ -x /usr/lib/cni/bridge ] || pkgs="$pkgs containernetworking-plugins"
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || pkgs="$pkgs libc6-dev"
  fi
  if [ -n "$pkgs" ]; then
    [ "$INSTALL_DEPS" = 1 ] || die "missing packages:$pkgs"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs > "$LOGS/apt.log" 2>&1
    log "apt-get installed:$pkgs"
  fi

  # 2. keys, token
  if [ ! -s "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    echo "$(openssl rand -hex 16),admin,admin,system:masters" > "$PKI/tokens.csv"
    chmod 600 "$PKI/sa.key" "$PKI/tokens.csv"
  fi
  # The API server's serving certificate, ours: the one it generates itself names its advertise address but not
  # 127.0.0.1 once it binds every address, and the kubelet, kubectl and the tests dial 127.0.0.1. Made again when
  # the node's address changed. Self-signed, so it is its own CA (kubeconfigs and the pods' root CA).
  local service_ip=${SERVICE_CIDR%/*}; service_ip=${service_ip%.*}.1
  local sans="IP:127.0.0.1,IP:$NODE_IP,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
  sans="$sans,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  if ! openssl x509 -in "$PKI/serving.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$NODE_IP\b"; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kube-apiserver" -keyout "$PKI/serving.key" \
      -out "$PKI/serving.crt" -addext "subjectAltName=$sans" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" 2>/dev/null
    chmod 600 "$PKI/serving.key"
  fi
  local TOKEN; TOKEN=$(cut -d, -f1 "$PKI/tokens.csv")
  local API=https://127.0.0.1:$APISERVER_PORT

  # 3. etcd
  if ! alive etcd "etcd --name lc"; then
    start_bg etcd etcd --name lc --data-dir "$LC_DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "lc=http://127.0.0.1:$ETCD_PEER_PORT"
  fi
  wait_for 60 etcd "$LOGS/etcd.log" -- sh -c "curl -sf http://127.0.0.1:$ETCD_CLIENT_PORT/health | grep -q true"
  log "etcd healthy (127.0.0.1:$ETCD_CLIENT_PORT)"

  # 4. kube-apiserver (serving cert is self-generated into --cert-dir)
  if ! alive kube-apiserver "$K8S_BIN/kube-apiserver"; then
    # The API server's own record of scale writes (who wrote a Deployment's replicas, from which address): what
    # the tests of several gateway replicas check "one writer at a time" against. Nothing else is recorded.
    cat > "$LC_DIR/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [patch, update]
    resources: [{group: apps, resources: [deployments/scale]}]
  - level: None
POLICY
    start_bg kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --bind-address="$APISERVER_BIND" --secure-port="$APISERVER_PORT" --advertise-address="$NODE_IP" \
      --tls-cert-file="$PKI/serving.crt" --tls-private-key-file="$PKI/serving.key" --token-auth-file="$PKI/tokens.csv" --authorization-mode=RBAC \
      --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
      --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range="$SERVICE_CIDR" \
      --allow-privileged --kubelet-preferred-address-types=InternalIP \
      --audit-policy-file="$LC_DIR/audit-policy.yaml" --audit-log-path="$LOGS/audit.log" --audit-log-maxsize=100
  fi
  wait_for 120 kube-apiserver "$LOGS/kube-apiserver.log" -- \
    sh -c "curl -sk -H 'Authorization: Bearer $TOKEN' $API/readyz | grep -qx ok"
  log "kube-apiserver ready ($API)"
  cat > "$KCFG" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: lc, cluster: {server: "$API", certificate-authority-data: "$(base64 -w0 "$PKI/serving.crt")"}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: lc, context: {cluster: lc, user: admin, namespace: default}}]
current-context: lc
EOF
  chmod 600 "$KCFG"

  # 5. controller-manager + scheduler
  if ! alive kube-controller-manager "$K8S_BIN/kube-controller-manager"; then
    start_bg kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$KCFG" \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/serving.crt" \
      --leader-elect=false --bind-address=127.0.0.1 --port=0 --flex-volume-plugin-dir="$LC_DIR/volume-plugins"
  fi
  if ! alive kube-scheduler "$K8S_BIN/kube-scheduler"; then
    start_bg kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$KCFG" --leader-elect=false --bind-address=127.0.0.1 --port=0
  fi
  wait_for 60 kube-controller-manager "$LOGS/kube-controller-manager.log" -- sh -c "curl -sk https://127.0.0.1:10257/healthz | grep -qx ok"
  wait_for 60 kube-scheduler "$LOGS/kube-scheduler.log" -- sh -c "curl -sk https://127.0.0.1:10259/healthz | grep -qx ok"
  log "kube-controller-manager + kube-scheduler healthy"

  if [ "$WITH_NODE" != 1 ]; then
    wait_for 60 "default serviceaccount token" "$LOGS/kube-controller-manager.log" -- sh -c \
      "curl -sk -H 'Authorization: Bearer $TOKEN' $API/api/v1/namespaces/default/serviceaccounts/default | grep -q '\"secrets\"'"
    log "control plane ready (no node): export KUBECONFIG=$KCFG"
    return 0
  fi

  # 6. containerd (private root/state/socket, so a system containerd/docker is not disturbed)
  [ -f "$LC_DIR/sysctl.saved" ] || { for k in net/ipv4/ip_forward net/ipv4/conf/all/route_localnet; do
    echo "$k $(cat /proc/sys/$k)"; done > "$LC_DIR/sysctl.saved"; }
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  cat > "$LC_DIR/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
[grpc]
  address = "$CTRD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # CAP_SYS_RESOURCE may be missing (it is on the Firecracker VM this was developed on): without this,
  # runc fails with "nsexec: failed to update /proc/self/oom_score_adj: Permission denied".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$LC_DIR/cni/net.d"
EOF
  # pods get routes only to the pod and service ranges: no default route, nothing leaves the machine
  cat > "$LC_DIR/cni/net.d/10-lc-bridge.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "lc-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$LC_DIR/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "$POD_CIDR"}, {"dst": "$SERVICE_CIDR"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  if ! alive containerd "containerd --config $LC_DIR/containerd.toml"; then
    start_bg containerd containerd --config "$LC_DIR/containerd.toml"
  fi
  wait_for 30 containerd "$LOGS/containerd.log" -- $CTR version
  log "containerd up ($CTRD_SOCK)"

  # 7. images (built once, cached as docker-archive tarballs in $IMAGE_CACHE_DIR)
  if ! has_image "$PAUSE_IMAGE"; then
    [ -s "$IMAGE_CACHE_DIR/pause.tar" ] || { build_pause_image; log "pause image built (gcc -static)"; }
    $CTR images import "$IMAGE_CACHE_DIR/pause.tar" >/dev/null; log "imported $PAUSE_IMAGE"
  fi
  if ! has_image "$PY_IMAGE"; then
    [ -s "$IMAGE_CACHE_DIR/python3.tar" ] || { build_python_image; log "python image built (debootstrap minbase + python3)"; }
    $CTR images import "$IMAGE_CACHE_DIR/python3.tar" >/dev/null; log "imported $PY_IMAGE"
  fi

  # 8. kubelet
  cat > "$LC_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
volumePluginDir: $LC_DIR/volume-plugins
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", nodefs.inodesFree: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
nodeStatusUpdateFrequency: 2s   # default 10s; makes the first Ready visible ~10s sooner
resolvConf: /etc/resolv.conf
EOF
  local kstart=0
  if ! alive kubelet "$K8S_BIN/kubelet"; then
    kstart=$(date +%s)
    start_bg kubelet "$K8S_BIN/kubelet" --config="$LC_DIR/kubelet-config.yaml" --kubeconfig="$KCFG" \
      --root-dir="$KUBELET_ROOT" --cert-dir="$KUBELET_ROOT/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
      --container-runtime=remote --container-runtime-endpoint="unix://$CTRD_SOCK"
  fi
  # Ready=True with a heartbeat from this kubelet run (a Node object left in etcd may still say Ready)
  wait_for 120 "node $NODE_NAME Ready" "$LOGS/kubelet.log" -- sh -c \
    "curl -sk -H 'Authorization: Bearer $TOKEN' $API/api/v1/nodes/$NODE_NAME | python3 -c 'import json,sys,datetime as d; n=json.load(sys.stdin); sys.exit(0 if any(c[\"type\"]==\"Ready\" and c[\"status\"]==\"True\" and d.datetime.strptime(c[\"lastHeartbeatTime\"],\"%Y-%m-%dT%H:%M:%SZ\").replace(tzinfo=d.timezone.utc).timestamp() >= $kstart - 1 for c in n[\"status\"][\"conditions\"]) else 1)'"
  log "kubelet: node $NODE_NAME Ready"

  # 9. kube-proxy (ClusterIP services, iptables mode)
  if [ "$WITH_KUBE_PROXY" = 1 ] && [ -x "$K8S_BIN/kube-proxy" ]; then
    if ! alive kube-proxy "$K8S_BIN/kube-proxy"; then
      start_bg kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$KCFG" --proxy-mode=iptables --cluster-cidr="$POD_CIDR" \
        --hostname-override="$NODE_NAME" --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
        --conntrack-max-per-core=0
    fi
    wait_for 60 kube-proxy "$LOGS/kube-proxy.log" -- sh -c "curl -s http://127.0.0.1:10256/healthz | grep -q lastUpdated"
    log "kube-proxy healthy"
  fi
  # wait for the default ServiceAccount token (pods are rejected until it exists)
  wait_for 60 "default serviceaccount token" "$LOGS/kube-controller-manager.log" -- sh -c \
    "curl -sk -H 'Authorization: Bearer $TOKEN' $API/api/v1/namespaces/default/serviceaccounts/default | grep -q '\"secrets\"'"
  log "cluster ready: export KUBECONFIG=$KCFG"
}

# ---------------------------------------------------------------- smoke test
podtiming() { # podtiming NAMESPACE DEPLOYMENT REPLICAS: scale via the API and time each pod (seen/Running/Ready/gone)
  LC_API="https://127.0.0.1:$APISERVER_PORT" LC_TOKEN="$(cut -d, -f1 "$PKI/tokens.csv")" LC_CA="$PKI/serving.crt" \
  python3 - "$@" <<'PY'
import json, os, ssl, sys, time, urllib.request
ns, dep, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
api, tok = os.environ["LC_API"], os.environ["LC_TOKEN"]
ctx = ssl.create_default_context(cafile=os.environ["LC_CA"])
def req(method, path, body=None, ctype="application/json"):
    r = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body else None,
                               headers={"Authorization": "Bearer " + tok, "Content-Type": ctype})
    return json.load(urllib.request.urlopen(r, context=ctx))
sel = ",".join(f"{k}={v}" for k, v in req("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{dep}")["spec"]["selector"]["matchLabels"].items())
t0 = time.time()
req("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{dep}/scale", {"spec": {"replicas": n}}, "application/merge-patch+json")
seen = {}
while time.time() - t0 < 180:
    pods = req("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={sel}")["items"]
    now = time.time() - t0
    names = {p["metadata"]["name"] for p in pods}
    for p in pods:
        d = seen.setdefault(p["metadata"]["name"], {"seen": now})
        if p["status"].get("phase") == "Running": d.setdefault("running", now)
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])): d.setdefault("ready", now)
    for nm, d in seen.items():
        if nm not in names: d.setdefault("gone", now)
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if n == 0 and not pods: break
    if n > 0 and len(live) == n and all("ready" in seen[p["metadata"]["name"]] for p in live): break
    time.sleep(0.1)
print(f"  scale {dep} -> {n}: done in {time.time()-t0:.2f}s")
for nm, d in sorted(seen.items()):
    print("    %-28s " % nm + "  ".join(f"{k}@{v:.2f}s" for k, v in d.items()))
PY
}
cmd_smoke() {
  local TOKEN; TOKEN=$(cut -d, -f1 "$PKI/tokens.csv"); : >> "$LC_DIR/timings.txt"
  kc apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: lc-smoke}
spec:
  replicas: 1
  selector: {matchLabels: {app: lc-smoke}}
  template:
    metadata: {labels: {app: lc-smoke}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: $PY_IMAGE
        imagePullPolicy: Never
        command: ["python3", "-m", "http.server", "8080"]
        workingDir: /tmp
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: lc-smoke}
spec: {selector: {app: lc-smoke}, ports: [{port: 80, targetPort: 8080}]}
EOF
  log "smoke: deployment applied"
  kc rollout status deploy/lc-smoke --timeout=120s >/dev/null
  log "smoke: 1/1 Ready"
  local ip cip
  for ip in $(kc get pods -l app=lc-smoke -o jsonpath='{.items[*].status.podIP}'); do
    curl -sS -m 5 -o /dev/null -w "  curl pod  http://$ip:8080/ -> HTTP %{http_code}\n" "http://$ip:8080/"; done
  cip=$(kc get svc lc-smoke -o jsonpath='{.spec.clusterIP}')
  if [ "$WITH_KUBE_PROXY" = 1 ]; then
    wait_for 30 "ClusterIP $cip" "$LOGS/kube-proxy.log" -- curl -sf -m 2 "http://$cip/"
    curl -sS -m 5 -o /dev/null -w "  curl svc  http://$cip:80/ -> HTTP %{http_code}\n" "http://$cip/"
  fi
  kc logs deploy/lc-smoke --tail=2 | sed 's/^/  pod log: /'
  kc exec deploy/lc-smoke -- python3 -c 'import sys; print("  kubectl exec ok:", sys.version.split()[0])'
  podtiming default lc-smoke 0 | tee -a "$LC_DIR/timings.txt"
  podtiming default lc-smoke 2 | tee -a "$LC_DIR/timings.txt"
  for ip in $(kc get pods -l app=lc-smoke -o jsonpath='{.items[*].status.podIP}'); do
    curl -sS -m 5 -o /dev/null -w "  curl pod  http://$ip:8080/ -> HTTP %{http_code}\n" "http://$ip:8080/"; done
  kc delete deploy/lc-smoke svc/lc-smoke --wait=true >/dev/null
  log "smoke: passed, cleaned up"
}

cmd_pack_rootfs() { # DIR NAME:TAG OUT.tar [ENTRYPOINT_JSON [CMD_JSON [WORKDIR]]]: an image tarball, not imported
  mkimage "$1" "$2" "$3" "${4:-null}" "${5:-null}" "${6:-/}"
}

cmd_import_rootfs() { # DIR NAME:TAG [CMD_JSON]
  local out; out=$(mktemp --suffix=.tar)
  mkimage "$1" "$2" "$out" null "${3:-null}"; $CTR images import "$out"; rm -f "$out"
}

cmd_status() {
  local n; for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if [ -s "$PIDS/$n.pid" ] && kill -0 "$(cat "$PIDS/$n.pid")" 2>/dev/null; then echo "$n: running (pid $(cat "$PIDS/$n.pid"))"
    else echo "$n: stopped"; fi; done
  [ -s "$KCFG" ] && kc get nodes -o wide || true
}

# ---------------------------------------------------------------- down
stop_pid() { # stop_pid NAME [TIMEOUT]: TERM, wait, KILL - only the pid we saved
  local f=$PIDS/$1.pid p i; [ -s "$f" ] || return 0; p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 $(( ${2:-15} * 5 ))); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && { echo "  $1 ($p) did not exit, SIGKILL"; kill -9 "$p" 2>/dev/null || true; sleep 0.5; }
    echo "  stopped $1 (pid $p)"
  fi
  rm -f "$f"
}
cmd_down() {
  local purge=0; [ "${1:-}" = --purge ] && purge=1
  [ -d "$PIDS" ] || { echo "nothing to do ($PIDS missing)"; return 0; }
  # let kubelet tear pods down properly (CNI DEL, unmounts) while the control plane is still there
  if [ -s "$KCFG" ] && [ -s "$PIDS/kubelet.pid" ] && kill -0 "$(cat "$PIDS/kubelet.pid")" 2>/dev/null; then
    stop_pid kube-controller-manager; stop_pid kube-scheduler
    kc delete pods --all --all-namespaces --grace-period=1 --timeout=60s >/dev/null 2>&1 || true
  fi
  stop_pid kube-proxy; stop_pid kubelet; stop_pid kube-scheduler; stop_pid kube-controller-manager
  [ "$WITH_KUBE_PROXY" = 1 ] && [ -x "$K8S_BIN/kube-proxy" ] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  if [ -s "$PIDS/containerd.pid" ] && kill -0 "$(cat "$PIDS/containerd.pid")" 2>/dev/null; then
    local t; for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 1
    for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for t in $($CTR containers ls -q 2>/dev/null); do $CTR containers delete "$t" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  stop_pid kube-apiserver 5; stop_pid etcd
  # leftovers: pod volume mounts, sandbox netns, container rootfs mounts, bridge, iptables chains
  findmnt -rn -o TARGET | grep -E "^($KUBELET_ROOT|$CTRD_STATE|$CTRD_ROOT)(/|$)" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  local ns; for ns in /run/netns/cni-*; do [ -e "$ns" ] || continue; umount "$ns" 2>/dev/null || true; rm -f "$ns"; done
  ip link del cni0 2>/dev/null || true
  local tbl tables="filter nat mangle"; command -v iptables >/dev/null || tables=""
  for tbl in $tables; do
    iptables -t $tbl -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE-|CNI-)' \
      | sed 's/^-A/-D/' | while read -r r; do eval iptables -t $tbl "$r" 2>/dev/null || true; done || true
    iptables -t $tbl -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/{print $2}' | while read -r c; do iptables -t $tbl -F "$c" 2>/dev/null || true; done || true
    iptables -t $tbl -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/{print $2}' | while read -r c; do iptables -t $tbl -X "$c" 2>/dev/null || true; done || true
  done
  if [ -f "$LC_DIR/sysctl.saved" ]; then
    while read -r k v; do echo "$v" > "/proc/sys/$k"; done < "$LC_DIR/sysctl.saved"; rm -f "$LC_DIR/sysctl.saved"; fi
  rm -rf "$LC_DIR/cni/ipam"
  if [ $purge = 1 ]; then rm -rf "$KUBELET_ROOT" "$CTRD_ROOT" "$CTRD_STATE" "$LC_DIR"; echo "  purged state (kept nothing)"; fi
  echo "down: done"
}

case "${1:-up}" in
  up) cmd_up ;;
  kubeconfig) echo "$KCFG" ;;
  smoke) cmd_smoke ;;
  status) cmd_status ;;
  import-rootfs) shift; cmd_import_rootfs "$@" ;;
  pack-rootfs) shift; cmd_pack_rootfs "$@" ;;
  down) shift; cmd_down "$@" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
