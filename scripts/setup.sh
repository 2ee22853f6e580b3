#!/usr/bin/env bash
# Installs everything the tests and the demo need on a fresh Debian bookworm machine:
# Debian packages (registry, skopeo, umoci, openssl, htpasswd, strace), moto_server from Debian trixie
# through a side apt index (the system's sources are never touched), and the npm dependencies
# (which include the pinned Node 24 runtime). Idempotent: a second run only checks and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(docker-registry skopeo umoci openssl apache2-utils time strace)
MOTO_DEB_VERSION="${MOTO_DEB_VERSION:-5.1.1-4}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

log() { printf 'setup: %s\n' "$*"; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${APT_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
need_moto=0
installed python3-moto && [ -x /usr/bin/moto_server ] || need_moto=1

# The packaged registry ships a service bound to :5000 on all interfaces. Keep apt from starting
# it (policy-rc.d, restored afterwards) and make sure it is neither enabled nor listening.
policy_added=0
guard_services() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
}
restore_services() { [ "$policy_added" = 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d; }
trap restore_services EXIT

if [ "${#missing[@]}" -gt 0 ] || [ "$need_moto" = 1 ]; then
  guard_services
  log "apt-get update"
  $SUDO apt-get update -qq
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$need_moto" = 1 ]; then
  # Bookworm has no python3-moto; trixie's is arch-independent and installs on bookworm's deps.
  side=$(mktemp -d)
  chmod 755 "$side"   # apt downloads as user _apt
  mkdir -p "$side/lists/partial" "$side/etc"
  mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
  cat >"$side/etc/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  side_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$side/etc" -o "Dir::State::Lists=$side/lists")
  log "fetching python3-moto=$MOTO_DEB_VERSION from trixie via a side index ($mirror)"
  $SUDO apt-get "${side_opts[@]}" update -qq
  (cd "$side" && $SUDO apt-get "${side_opts[@]}" download -qq "python3-moto=$MOTO_DEB_VERSION")
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$side"/python3-moto_*_all.deb python3-flask-cors python3-yaml >/dev/null
  $SUDO rm -rf "$side"
fi

# Whatever happened above, leave no packaged registry listening on all interfaces.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
$SUDO update-rc.d docker-registry disable >/dev/null 2>&1 || true
if [ -f /etc/docker/registry/config.yml ] && grep -qE '^\s*addr:\s*:5000' /etc/docker/registry/config.yml; then
  $SUDO sed -i -E 's/^(\s*addr:\s*):5000/\1127.0.0.1:5000/' /etc/docker/registry/config.yml
fi
if pgrep -f 'docker-registry serve /etc/docker/registry/config.yml' >/dev/null 2>&1; then
  $SUDO pkill -f 'docker-registry serve /etc/docker/registry/config.yml' || true
fi

# npm ci only when the lockfile changed since the last successful install.
stamp=node_modules/.cartesia-airgap-setup
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi

for bin in /usr/bin/docker-registry /usr/bin/skopeo /usr/bin/umoci /usr/bin/openssl /usr/bin/htpasswd /usr/bin/moto_server node_modules/.bin/node; do
  [ -x "$bin" ] || { echo "setup: $bin is missing after install; re-run scripts/setup.sh and read its output" >&2; exit 1; }
done
log "ready (node $(node_modules/.bin/node --version), $(/usr/bin/docker-registry --version 2>/dev/null | awk '{print $3}') registry, skopeo $(/usr/bin/skopeo --version | awk '{print $3}'))"
