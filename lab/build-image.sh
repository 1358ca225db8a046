#!/usr/bin/env bash
# Build the Debian 12 base image of the lab hosts once, and reuse it until
# its recipe (this file) changes: the image tag is the recipe's hash.
#
# No registry image can be pulled here, so the rootfs comes from debootstrap
# and enters podman through `podman import`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image_name=${LAB_IMAGE_NAME:-localhost/pdsno-lab-debian12}
recipe_hash=$(sha256sum "$here/build-image.sh" | cut -c1-12)
image="$image_name:$recipe_hash"

if podman image exists "$image"; then
  echo "lab image $image is up to date"
  exit 0
fi

# The mirrors are the ones this machine's apt already uses, so the lab needs
# no configuration of its own; LAB_DEBIAN_MIRROR and LAB_DEBIAN_SECURITY_MIRROR
# override them.
apt_uris() {
  grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' || true
}
mirror=${LAB_DEBIAN_MIRROR:-$(apt_uris | grep -v -- '-security' | grep -m1 debian || true)}
security_mirror=${LAB_DEBIAN_SECURITY_MIRROR:-$(apt_uris | grep -m1 -- '-security' || true)}
if [ -z "$mirror" ]; then
  echo "error: no Debian mirror found in /etc/apt; set LAB_DEBIAN_MIRROR" >&2
  exit 1
fi

packages=systemd,systemd-sysv,dbus,python3,python3-apt,openssh-server,sudo,ca-certificates,iproute2,procps,gnupg
rootfs=$(mktemp -d /var/tmp/pdsno-lab-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -n 30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

in_root() { chroot "$rootfs" /bin/sh -ec "$1"; }

# The account Ansible logs in as, as it would on a production host: a key
# only, passwordless sudo. The key is mounted per lab at run time.
in_root 'useradd --create-home --shell /bin/bash ansible'
echo 'ansible ALL=(ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/ansible"
chmod 0440 "$rootfs/etc/sudoers.d/ansible"
install -d -m 0755 "$rootfs/etc/ssh/authorized_keys"
cat >"$rootfs/etc/ssh/sshd_config.d/lab.conf" <<'CONF'
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PasswordAuthentication no
PermitRootLogin no
UseDNS no
CONF

# Host keys are per container, never baked into the shared image.
rm -f "$rootfs"/etc/ssh/ssh_host_*
cat >"$rootfs/etc/systemd/system/lab-ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Generate this lab host's SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
in_root 'systemctl enable lab-ssh-host-keys.service ssh.service'

# Units that make no sense in a container and slow its boot.
in_root 'systemctl mask getty@tty1.service console-getty.service systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service sys-kernel-config.mount'

# Each container gets its own machine-id at boot.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
# Sources as on an installed Debian 12, and package lists already fetched,
# as a real host has them (check mode needs them to know a package exists).
{
  echo "deb $mirror bookworm main"
  echo "deb $mirror bookworm-updates main"
  if [ -n "$security_mirror" ]; then echo "deb $security_mirror bookworm-security main"; fi
} >"$rootfs/etc/apt/sources.list"
in_root 'apt-get -o APT::Sandbox::User=root update -q >/dev/null && apt-get clean'

tar --one-file-system -C "$rootfs" -c . | podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'STOPSIGNAL=SIGRTMIN+3' \
  --change 'ENV container=podman' \
  - "$image" >/dev/null
podman tag "$image" "$image_name:latest"
echo "built lab image $image"

# Older recipes' images are dead weight; one still used by a container stays.
podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$image_name" \
  | grep -v -e ":$recipe_hash\$" -e ':latest$' \
  | xargs --no-run-if-empty podman rmi >/dev/null 2>&1 || true
