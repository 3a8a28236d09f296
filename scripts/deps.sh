# shellcheck shell=bash
# Sourced by the scripts in this directory: makes sure the tools kh's tests and
# sandbox need are installed, installing Debian packages when they are missing.

kh_need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed. Install a Rust toolchain >= 1.85 (https://rustup.rs), then re-run." >&2
    exit 1
  fi
}

# kh_apt_install BINARY:PACKAGE ... installs each PACKAGE whose BINARY is missing.
kh_apt_install() {
  local missing=() pair bin pkg
  for pair in "$@"; do
    bin=${pair%%:*}
    pkg=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "Installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
