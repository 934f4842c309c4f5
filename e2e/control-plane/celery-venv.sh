#!/usr/bin/env bash
# A virtualenv with Celery (and redis-py) and the repository's funcscale-celery integration
# (installed from funcscale-celery/ of this checkout) for the e2e suite's Celery pods: the
# process kubelet maps a Celery application image to this virtualenv. Created once, cached
# outside the clone ($FUNCSCALE_CELERY_VENV, default ~/.cache/funcscale/celery-venv); the stamp
# covers the packages and the integration's sources, so a changed integration is reinstalled.
# Prints its directory.
set -euo pipefail
VENV=${FUNCSCALE_CELERY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/funcscale/celery-venv}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
INTEGRATION="$REPO/funcscale-celery"
PKGS=('celery[redis]>=5.3,<6')
sources=$(cd "$INTEGRATION" && find pyproject.toml src -type f ! -path '*.egg-info*' ! -name '*.pyc' | LC_ALL=C sort | xargs cat | cksum | cut -d' ' -f1)
stamp="$VENV/.installed-$(echo "${PKGS[*]}" | cksum | cut -d' ' -f1)-funcscale-celery-$sources"
if [ ! -f "$stamp" ]; then
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if [ ! -f "$stamp" ]; then
    echo "celery-venv: installing ${PKGS[*]} and funcscale-celery ($INTEGRATION) into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}" >&2
    # from a copy: pip builds in the source tree, and the checkout stays clean
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    cp -r "$INTEGRATION/pyproject.toml" "$INTEGRATION/README.md" "$INTEGRATION/src" "$build/"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "$build" >&2
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
fi
echo "$VENV"
