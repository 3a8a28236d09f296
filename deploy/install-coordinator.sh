#!/usr/bin/env bash
# Installs kh-coordinator as a systemd service, or removes it (--uninstall).
# Safe to re-run: each action says whether it changed something.
#
#   install-coordinator.sh --advertise 10.0.0.5 [--advertise coord.example] \
#       [--listen 0.0.0.0:7443] [--binary ./kh-coordinator] [--no-start]
#   install-coordinator.sh --uninstall [--purge]
#
# DESTDIR=/some/root installs under that prefix (packaging, tests); then no
# user is created and systemctl is only called when SYSTEMCTL names one.
# The sealing key stays in the data dir unless you move it out: see the
# LoadCredential= line in kh-coordinator.service.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
SYSTEMCTL=${SYSTEMCTL:-}
if [ -z "$SYSTEMCTL" ] && [ -z "$DESTDIR" ]; then SYSTEMCTL=systemctl; fi

binary=""
listen="0.0.0.0:7443"
advertise=()
uninstall=0
purge=0
start=1

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install-coordinator: error: $*" >&2; exit 1; }
say() { echo "install-coordinator: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --advertise) [ $# -ge 2 ] || die "--advertise needs a value"; advertise+=("$2"); shift 2 ;;
    --listen) [ $# -ge 2 ] || die "--listen needs a value"; listen=$2; shift 2 ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a value"; binary=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

bin_path="$DESTDIR/usr/local/bin/kh-coordinator"
unit_path="$DESTDIR/etc/systemd/system/kh-coordinator.service"
env_path="$DESTDIR/etc/default/kh-coordinator"
data_dir="$DESTDIR/var/lib/kh-coordinator"

systemctl_do() {
  if [ -n "$SYSTEMCTL" ]; then "$SYSTEMCTL" "$@"; else say "skipped: systemctl $* (DESTDIR install)"; fi
}

# Installs $1 to $2 with mode $3, reporting whether it changed.
put() {
  local src=$1 dst=$2 mode=$3
  mkdir -p "$(dirname "$dst")"
  if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "$mode" ]; then
    say "unchanged: $dst"
  else
    install -m "$mode" "$src" "$dst"
    say "installed: $dst"
  fi
}

if [ "$uninstall" = 1 ]; then
  if [ -f "$unit_path" ]; then
    systemctl_do disable --now kh-coordinator.service || say "warning: could not stop kh-coordinator.service"
  fi
  for f in "$unit_path" "$env_path" "$bin_path"; do
    if [ -e "$f" ]; then rm -f "$f"; say "removed: $f"; else say "absent: $f"; fi
  done
  systemctl_do daemon-reload
  if [ "$purge" = 1 ]; then
    rm -rf "$data_dir"
    say "purged: $data_dir (the kh CA and all join material are gone)"
  elif [ -d "$data_dir" ]; then
    say "kept: $data_dir (the kh CA and join material; remove with --purge)"
  fi
  exit 0
fi

[ ${#advertise[@]} -gt 0 ] || die "--advertise HOST is required: an IP or DNS name agents and khctl use to reach this coordinator"
if [ -z "$binary" ]; then
  for candidate in "$here/kh-coordinator" "$here/../target/release/kh-coordinator" "$(command -v kh-coordinator || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then binary=$candidate; break; fi
  done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then die "no kh-coordinator binary found; pass --binary PATH"; fi

put "$binary" "$bin_path" 755
put "$here/systemd/kh-coordinator.service" "$unit_path" 644

flags=""
for a in "${advertise[@]}"; do flags="$flags --advertise $a"; done
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf '# Written by install-coordinator.sh; read by kh-coordinator.service.\nKH_LISTEN=%s\nKH_ADVERTISE_FLAGS=%s\n' "$listen" "${flags# }" > "$tmp"
put "$tmp" "$env_path" 644

if [ -z "$DESTDIR" ]; then
  if id kh-coordinator >/dev/null 2>&1; then
    say "unchanged: user kh-coordinator"
  else
    useradd --system --home-dir /var/lib/kh-coordinator --shell /usr/sbin/nologin kh-coordinator
    say "created: system user kh-coordinator"
  fi
fi
if [ -d "$data_dir" ]; then
  say "unchanged: $data_dir"
else
  install -d -m 700 "$data_dir"
  say "created: $data_dir (0700)"
fi
if [ -z "$DESTDIR" ]; then chown kh-coordinator:kh-coordinator "$data_dir"; fi

systemctl_do daemon-reload
if [ "$start" = 1 ]; then
  systemctl_do enable --now kh-coordinator.service
  say "enabled and started kh-coordinator.service"
  say "admin credentials for khctl: /var/lib/kh-coordinator/admin.khconfig (copy it to ~/.config/kh/config)"
  say "to keep the sealing key out of the data dir and its backups, see LoadCredential= in $unit_path"
else
  say "not started (--no-start); start it with: systemctl enable --now kh-coordinator"
fi
