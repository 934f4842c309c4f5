#!/usr/bin/env bash
# A virtualenv with Celery (and redis-py) for the e2e suite's Celery pods: the process kubelet
# maps a Celery application image to this virtualenv. Created once, cached outside the clone
# ($FUNCSCALE_CELERY_VENV, default ~/.cache/funcscale/celery-venv); prints its directory.
set -euo pipefail
VENV=${FUNCSCALE_CELERY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/funcscale/celery-venv}
PKGS=('celery[redis]>=5.3,<6')
stamp="$VENV/.installed-$(echo "${PKGS[*]}" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if [ ! -f "$stamp" ]; then
    echo "celery-venv: installing ${PKGS[*]} into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}" >&2
    touch "$stamp"
  fi
fi
echo "$VENV"
