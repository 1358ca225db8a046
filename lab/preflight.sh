#!/usr/bin/env bash
# Before `make lab-image` starts anything: name the apt package of every
# program it needs that is missing, instead of failing half-way through.
# (Kept out of lab/build-image.sh, whose hash tags the image.)
set -euo pipefail

missing=()
need() {  # need PROGRAM PACKAGE
  command -v "$1" >/dev/null || [ -x "/usr/lib/podman/$1" ] || [ -x "/usr/libexec/podman/$1" ] \
    || missing+=("$1 (apt package $2)")
}
need podman podman
need conmon conmon
need netavark netavark
need aardvark-dns aardvark-dns
need iptables iptables
need debootstrap debootstrap
need gpgv gpgv
need wget wget
need chroot coreutils
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
  || missing+=("/usr/share/keyrings/debian-archive-keyring.gpg (apt package debian-archive-keyring)")

if [ ${#missing[@]} -gt 0 ]; then
  echo "error: the lab needs what this machine lacks:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "Run \`make deps\` (it installs APT_PACKAGES of the Makefile), or apt-get install the packages above." >&2
  exit 1
fi
