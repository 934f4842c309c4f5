#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, without containers: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler as plain processes (binaries from build.sh).
#
#   e2e/control-plane/control-plane.sh up      start (or reuse the running one); prints its dir
#   e2e/control-plane/control-plane.sh down    stop it and delete its state
#   e2e/control-plane/control-plane.sh status  exit 0 when it answers
#
# State, certificates, logs and kubeconfigs live in $FUNCSCALE_CP_DIR
# (default /tmp/funcscale-control-plane): admin.kubeconfig (system:masters, for tests and
# kubectl), and the component logs. The API server listens on https://127.0.0.1:$FUNCSCALE_CP_PORT
# (default 16443) with token authentication, RBAC authorization and the default admission
# plugins plus PodNodeSelector (each e2e namespace pins its pods to its own process kubelet).
# Pods run only where a kubelet runs them: the e2e suite's process kubelet (e2e/src/node/).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${FUNCSCALE_CP_DIR:-/tmp/funcscale-control-plane}
PORT=${FUNCSCALE_CP_PORT:-16443}
ETCD_PORT=${FUNCSCALE_CP_ETCD_PORT:-12379}
say() { echo "control-plane: $*" >&2; }

answers() {
  [ -f "$DIR/admin.token" ] &&
    curl -fsS --max-time 2 --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $(cat "$DIR/admin.token")" \
      "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1
}

stop_all() {
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if [ -f "$DIR/$c.pid" ]; then
      kill "$(cat "$DIR/$c.pid")" 2>/dev/null || true
    fi
  done
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if [ -f "$DIR/$c.pid" ]; then
      p=$(cat "$DIR/$c.pid")
      for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
      rm -f "$DIR/$c.pid"
    fi
  done
}

kubeconfig() { # file user token
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: funcscale-e2e
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: funcscale-e2e
  context: {cluster: funcscale-e2e, user: $2}
current-context: funcscale-e2e
KC
}

wait_for() { # what seconds command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
  say "$what did not come up in ${secs} s; its log:"; return 1
}

# The API server process of a previous `up` is alive.
alive() { [ -f "$DIR/kube-apiserver.pid" ] && kill -0 "$(cat "$DIR/kube-apiserver.pid")" 2>/dev/null; }

up() {
  if answers; then echo "$DIR"; return 0; fi
  exec 8>"$DIR.lock"
  flock 8                                     # concurrent callers wait for one start
  # A running one that is slow to answer (a loaded machine) is waited for, never replaced:
  # other tests use it.
  if alive; then
    for _ in $(seq 60); do answers && { echo "$DIR"; return 0; }; sleep 1; done
    say "the running API server (pid $(cat "$DIR/kube-apiserver.pid")) did not answer in 60 s: restarting"
  fi
  if answers; then echo "$DIR"; return 0; fi
  stop_all
  BIN=$("$HERE/build.sh")
  rm -rf "$DIR" && mkdir -p "$DIR/pki" "$DIR/etcd"
  say "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler ($BIN) in $DIR"
  # PKI: a CA, the API server's serving certificate (127.0.0.1, localhost, the service IP) and
  # the service-account signing key.
  (
    cd "$DIR/pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
      -subj "/CN=funcscale-e2e-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
      >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
      -days 30 -extfile apiserver.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  local admin cm sched
  admin=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  cm=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  sched=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$admin" >"$DIR/admin.token"
  cat >"$DIR/tokens.csv" <<TOK
$admin,admin,admin,"system:masters"
$cm,system:kube-controller-manager,kcm
$sched,system:kube-scheduler,sched
TOK
  kubeconfig "$DIR/admin.kubeconfig" admin "$admin"
  kubeconfig "$DIR/controller-manager.kubeconfig" system:kube-controller-manager "$cm"
  kubeconfig "$DIR/scheduler.kubeconfig" system:kube-scheduler "$sched"

  "$BIN/etcd" --name funcscale-e2e --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "funcscale-e2e=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 >"$DIR/etcd.log" 2>&1 &
  echo $! >"$DIR/etcd.pid"
  wait_for etcd 20 curl -fsS "http://127.0.0.1:$ETCD_PORT/health" -o /dev/null || { tail -20 "$DIR/etcd.log" >&2; exit 1; }

  "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$PORT" --insecure-port 0 \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" --token-auth-file "$DIR/tokens.csv" \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --authorization-mode RBAC --allow-privileged \
    --enable-admission-plugins PodNodeSelector \
    --service-cluster-ip-range 10.0.0.0/24 --cert-dir "$DIR/pki" \
    --enable-priority-and-fairness=false >"$DIR/kube-apiserver.log" 2>&1 &
  echo $! >"$DIR/kube-apiserver.pid"
  wait_for kube-apiserver 90 answers || { tail -30 "$DIR/kube-apiserver.log" >&2; exit 1; }

  "$BIN/kube-controller-manager" --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false --port 0 --secure-port 0 \
    --controllers '*,-bootstrapsigner,-tokencleaner' \
    --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
    --node-monitor-grace-period 40s >"$DIR/kube-controller-manager.log" 2>&1 &
  echo $! >"$DIR/kube-controller-manager.pid"

  "$BIN/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0 >"$DIR/kube-scheduler.log" 2>&1 &
  echo $! >"$DIR/kube-scheduler.pid"

  sleep 1
  for c in kube-controller-manager kube-scheduler; do
    kill -0 "$(cat "$DIR/$c.pid")" 2>/dev/null || { say "$c exited:"; tail -20 "$DIR/$c.log" >&2; exit 1; }
  done
  # The default ServiceAccount of `default` appears once the controller-manager's token and
  # service-account controllers run: proof that it works.
  wait_for "the controller-manager's service-account controller" 60 \
    curl -fsS --max-time 2 --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $admin" \
      "https://127.0.0.1:$PORT/api/v1/namespaces/default/serviceaccounts/default" -o /dev/null \
    || { tail -20 "$DIR/kube-controller-manager.log" >&2; exit 1; }
  say "up: KUBECONFIG=$DIR/admin.kubeconfig"
  echo "$DIR"
}

case "${1:-up}" in
  up) up ;;
  down) stop_all; rm -rf "$DIR" ;;
  status) answers ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
