#!/usr/bin/env bash
# Build once per version set, then reuse: kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl (module k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), kwok + kwokctl, helm, kind.
# All sources come from the Go module proxy through the go command. Prints the bin dir on stdout.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.14}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
KIND_VERSION=${KIND_VERSION:-v0.32.0}
RECIPE_REV=1                      # bump whenever this script changes what it produces
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 GOFLAGS="-trimpath -modcacherw"
CACHE=${K8S_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-test-bins}
log() { echo "[build-bins $(date +%T)] $*" >&2; }

# Writes the wrapper go.mod for k8s.io/kubernetes: same go/godebug lines as upstream, a require of
# the release, and every "=> ./staging/src/k8s.io/X" replace turned into "=> k8s.io/X v0.<minor>.<patch>".
gen_k8s_wrapper_gomod() { # <upstream go.mod> <vX.Y.Z>
  local up=$1 ver=$2 staging="v0.${2#v1.}"
  # (grep >/dev/null, never grep -q, after a pipe: an early exit kills the writer with SIGPIPE)
  if grep -E '=>[[:space:]]*\.{1,2}/' "$up" | grep -v 'staging/src/' >/dev/null; then
    echo "unexpected local replace in $up" >&2; return 1; fi
  echo 'module example.invalid/k8s-test-bins'
  echo
  grep -E '^go [0-9]' "$up"
  sed -n '/^godebug[[:space:]]*(/,/^)/p; /^godebug[[:space:]][^(]*$/p' "$up"
  echo
  echo "require k8s.io/kubernetes $ver"
  echo
  echo 'replace ('
  awk -v v="$staging" '{ if ($1 == "replace") { $1 = ""; $0 = $0 } }
       $2 == "=>" && $3 ~ /^\.\/staging\/src\// { printf "\t%s => %s %s\n", $1, $1, v }' "$up"
  echo ')'
}
[[ ${1:-} == --gen-gomod-only ]] && { gen_k8s_wrapper_gomod "$2" "$3"; exit; }

command -v go >/dev/null || { echo "go not found" >&2; exit 1; }
key=$(printf '%s\n' "$RECIPE_REV" "$(go env GOVERSION)" "$(go env GOOS)/$(go env GOARCH)" \
  "$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$HELM_VERSION" "$KIND_VERSION" | sha256sum | cut -c1-16)
OUT=$CACHE/$key
[[ -f $OUT/.complete ]] && { echo "$OUT/bin"; exit 0; }
mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock 9            # one builder at a time
[[ -f $OUT/.complete ]] && { echo "$OUT/bin"; exit 0; }
# The build's whole log is kept beside the cache (a cold build takes 10-25 min: a failure must
# say where and why, not vanish); stdout stays reserved for the bin dir.
LOG=$CACHE/build-$key.log
exec 2> >(tee "$LOG" >&2)
trap 'log "FAILED (exit $?) at line $LINENO: $BASH_COMMAND — full log: $LOG"' ERR
TMP=$(mktemp -d "$CACHE/.build.XXXXXX"); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/out/bin" "$TMP/out/share"
jget() { # jget Key[.Sub] < json   (prints "" when absent)
  python3 -c 'import json,sys
d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d.get(k, {}) if isinstance(d, dict) else {}
print(d if isinstance(d, str) else "")' "$1"; }

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (same version) -------
log "k8s.io/kubernetes $K8S_VERSION"
mkdir -p "$TMP/k8s"; cd "$TMP/k8s"
printf 'module example.invalid/probe\n\ngo %s\n' "$(go env GOVERSION | sed 's/^go//')" > go.mod
dl=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
upmod=$(jget GoMod <<<"$dl"); info=$(jget Info <<<"$dl"); commit=$(jget Origin.Hash <<<"$dl")
builddate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Time"])' "$info")
gen_k8s_wrapper_gomod "$upmod" "$K8S_VERSION" > go.mod
minor=$(cut -d. -f2 <<<"$K8S_VERSION")
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$builddate"
  [[ -n $commit ]] && ld+=" -X $p.gitCommit=$commit"
done
go build -mod=mod -ldflags "$ld" -o "$TMP/out/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
cp go.mod go.sum "$TMP/out/share/"            # record exactly what was built

# --- etcd (server/v3 has a main package but its go.mod has local replaces: use a wrapper too) ---
log "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
mkdir -p "$TMP/etcd"; cd "$TMP/etcd"
printf 'module example.invalid/etcd-bin\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
  "$(go env GOVERSION | sed 's/^go//')" "$ETCD_VERSION" > go.mod
go build -mod=mod -ldflags "-s -w" -o "$TMP/out/bin/etcd" go.etcd.io/etcd/server/v3

# --- kwok, kwokctl, helm, kind: plain go install (no replace directives in these modules) ------
log "kwok $KWOK_VERSION, helm $HELM_VERSION, kind $KIND_VERSION"
cd "$TMP"
GOBIN=$TMP/out/bin go install -ldflags "-s -w" \
  "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
case $HELM_VERSION in
  v3.*) hp=helm.sh/helm/v3
        hld="-X $hp/internal/version.version=$HELM_VERSION"
        for p in pkg/chartutil pkg/lint/rules; do    # default kube version for `helm template`/`lint`
          hld+=" -X $hp/$p.k8sVersionMajor=1 -X $hp/$p.k8sVersionMinor=$minor"; done ;;
  v4.*) hp=helm.sh/helm/v4; hld="-X $hp/internal/version.version=$HELM_VERSION" ;;
esac
GOBIN=$TMP/out/bin go install -ldflags "-s -w $hld" "$hp/cmd/helm@$HELM_VERSION"
GOBIN=$TMP/out/bin go install -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"

# kwok needs Stage objects to do anything: take the upstream "fast" stages from the module cache.
kdir=$(cd "$TMP/k8s" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | jget Dir)
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  cat "$kdir/kustomize/stage/$f"; printf '\n---\n'
done > "$TMP/out/share/kwok-stages.yaml"

# --- sanity + publish atomically -------------------------------------------------------------
B=$TMP/out/bin
# Each check captures the whole output first: piping cmd into a quiet grep (-q) under pipefail
# fails at random when grep exits at its first match and cmd dies of SIGPIPE writing its next line.
check_version() { # check_version WHAT EXPECTED CMD...
  local what=$1 want=$2 got; shift 2
  got=$("$@" 2>&1) || { log "FAILED: $what: '$*' exited $? (build kept in $TMP)"; trap - EXIT; exit 1; }
  [[ $got == *"$want"* ]] || { log "FAILED: $what reports '$got', expected '$want' (build kept in $TMP)"; trap - EXIT; exit 1; }
}
check_version kube-apiserver "Kubernetes $K8S_VERSION" "$B/kube-apiserver" --version
check_version etcd "etcd Version: ${ETCD_VERSION#v}" "$B/etcd" --version
check_version kubectl "$K8S_VERSION" "$B/kubectl" version --client
check_version helm "$HELM_VERSION" "$B/helm" version --short
check_version kind "${KIND_VERSION}" "$B/kind" version
{ echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION kind=$KIND_VERSION"
  echo "go=$(go env GOVERSION) built=$(date -u +%FT%TZ)"; } > "$TMP/out/VERSIONS"
touch "$TMP/out/.complete"; rm -rf "$OUT"; mv "$TMP/out" "$OUT"
[[ ${PRUNE_GO_CACHE:-0} == 1 ]] && go clean -cache
log "done: $OUT/bin"; echo "$OUT/bin"
