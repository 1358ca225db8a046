#!/usr/bin/env bash
# Run the README's set-up on a machine that never saw this project: a
# debootstrapped Debian (12 by default, 13 with SUITE=trixie) holding only
# what a machine of our kind starts with (python3 with venv, make, git), as
# a chroot of this machine. Inside it: a clone of this repository's HEAD,
# `make deps`, then pytest.
#
#   tools/fresh-machine.sh                      # Debian 12, the whole pytest suite
#   SUITE=trixie tools/fresh-machine.sh tests/test_fresh_machine.py
#
# Not covered: `make lab-image` (podman inside a chroot), so the two tests
# that need the lab image are left out. The chroot reaches PyPI and the
# Debian mirror as this machine does: it gets this machine's extra CA
# certificates and pip configuration, and nothing else of it.
set -euo pipefail

suite=${SUITE:-bookworm}
root=${FRESH_ROOT:-/var/tmp/pdsno-fresh-$suite}
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
project=$(cd "$(dirname "$0")/.." && pwd)
pytest_args=("$@")
if [ ${#pytest_args[@]} -eq 0 ]; then
  pytest_args=(--ignore=tests/test_lab_lifecycle.py
    --deselect=tests/test_lab_errors.py::test_missing_iptables_is_named_with_its_package)
fi

for tool in debootstrap chroot mount; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing: apt-get install debootstrap" >&2; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "error: debootstrap and chroot need root" >&2
  exit 1
fi

if [ ! -x "$root/usr/bin/python3" ]; then
  echo "debootstrap $suite into $root"
  debootstrap --variant=minbase --include=python3,python3-venv,make,git,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
fi

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for fs in proc sys dev; do
  mkdir -p "$root/$fs"
  if [ "$fs" = proc ]; then
    mount -t proc proc "$root/proc"
  else
    # rslave: unmounting the copy later must never reach this machine's own.
    mount --rbind "/$fs" "$root/$fs"
    mount --make-rslave "$root/$fs"
  fi
  mounted+=("$root/$fs")
done
mkdir -p "$root/src"
mount --bind "$project" "$root/src"
mounted+=("$root/src")

cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$root/etc/pip.conf"
chroot "$root" update-ca-certificates >/dev/null

# A new clone each run: what is committed, nothing of this checkout's state.
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash -ec '
    rm -rf /root/project
    git -c safe.directory="*" clone -q /src /root/project
    cd /root/project
    echo "fresh $(. /etc/os-release && echo "$PRETTY_NAME"), $(python3 --version), $(git log -1 --format="%h %s")"
    start=$(date +%s)
    make deps
    echo "make deps: $(($(date +%s) - start)) s"
    export PATH=/root/project/.venv/bin:$PATH ANSIBLE_CONFIG=/root/project/ansible.cfg
    pytest -q -p no:cacheprovider "$@"
  ' fresh-machine "${pytest_args[@]}"
