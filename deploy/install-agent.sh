#!/usr/bin/env bash
# Installs kh-agent as a systemd service and enrolls it, or removes it.
# Safe to re-run: each action says whether it changed something, and a host
# already enrolled with the same coordinator is not enrolled again.
#
#   install-agent.sh --coordinator 10.0.0.5:7443 --token abcdef.0123456789abcdef \
#       --ca-cert-hash sha256:... [--node-name NAME] [--binary ./kh-agent] [--no-start]
#   install-agent.sh --uninstall [--purge]
#
# Take the three values from `khctl token create --node NAME`.
# DESTDIR=/some/root installs under that prefix (packaging, tests); then
# systemctl is only called when SYSTEMCTL names one.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DESTDIR=${DESTDIR:-}
SYSTEMCTL=${SYSTEMCTL:-}
if [ -z "$SYSTEMCTL" ] && [ -z "$DESTDIR" ]; then SYSTEMCTL=systemctl; fi

binary=""
coordinator=""
token=""
hash=""
node_name=""
uninstall=0
purge=0
start=1

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install-agent: error: $*" >&2; exit 1; }
say() { echo "install-agent: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) [ $# -ge 2 ] || die "--coordinator needs a value"; coordinator=$2; shift 2 ;;
    --token) [ $# -ge 2 ] || die "--token needs a value"; token=$2; shift 2 ;;
    --ca-cert-hash) [ $# -ge 2 ] || die "--ca-cert-hash needs a value"; hash=$2; shift 2 ;;
    --node-name) [ $# -ge 2 ] || die "--node-name needs a value"; node_name=$2; shift 2 ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a value"; binary=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

bin_path="$DESTDIR/usr/local/bin/kh-agent"
unit_path="$DESTDIR/etc/systemd/system/kh-agent.service"
data_dir="$DESTDIR/var/lib/kh-agent"

systemctl_do() {
  if [ -n "$SYSTEMCTL" ]; then "$SYSTEMCTL" "$@"; else say "skipped: systemctl $* (DESTDIR install)"; fi
}

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
    systemctl_do disable --now kh-agent.service || say "warning: could not stop kh-agent.service"
  fi
  for f in "$unit_path" "$bin_path"; do
    if [ -e "$f" ]; then rm -f "$f"; say "removed: $f"; else say "absent: $f"; fi
  done
  systemctl_do daemon-reload
  if [ "$purge" = 1 ]; then
    rm -rf "$data_dir"
    say "purged: $data_dir (this host's kh identity is gone; re-enroll with a --force token)"
  elif [ -d "$data_dir" ]; then
    say "kept: $data_dir (this host's kh identity; remove with --purge)"
  fi
  exit 0
fi

[ -n "$coordinator" ] || die "--coordinator HOST:PORT is required (from \`khctl token create\`)"
[ -n "$token" ] || die "--token is required (from \`khctl token create --node NAME\`)"
[ -n "$hash" ] || die "--ca-cert-hash is required (from \`khctl token create\`)"
if [ -z "$node_name" ]; then node_name=$(hostname); fi
if [ -z "$binary" ]; then
  for candidate in "$here/kh-agent" "$here/../target/release/kh-agent" "$(command -v kh-agent || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then binary=$candidate; break; fi
  done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then die "no kh-agent binary found; pass --binary PATH"; fi

put "$binary" "$bin_path" 755
put "$here/systemd/kh-agent.service" "$unit_path" 644
if [ -d "$data_dir" ]; then
  say "unchanged: $data_dir"
else
  install -d -m 700 "$data_dir"
  say "created: $data_dir (0700)"
fi

# Enrollment pins the coordinator's CA by hash before the token leaves this
# host; re-running with the same values is a no-op. The token reaches
# kh-agent on stdin through the shell's builtin printf: as an argument `ps`
# would show it to every user of the host.
printf '%s\n' "$token" | "$bin_path" enroll --coordinator "$coordinator" --token-file - \
  --ca-cert-hash "$hash" --node-name "$node_name" --data-dir "$data_dir"

systemctl_do daemon-reload
if [ "$start" = 1 ]; then
  systemctl_do enable --now kh-agent.service
  say "enabled and started kh-agent.service as node $node_name"
else
  say "not started (--no-start); start it with: systemctl enable --now kh-agent"
fi
