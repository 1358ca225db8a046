#!/usr/bin/env bash
# Write the project-local containers.conf the lab hosts need on this machine,
# found by trying, not assumed: each setting is added only when a systemd
# container fails to start without it. Podman reads the file through
# CONTAINERS_CONF, so /etc is never touched.
#   usage: lab/containers-conf.sh IMAGE OUTPUT
set -euo pipefail
image=$1
out=$2
mkdir -p "$(dirname "$out")"
if ! command -v podman >/dev/null; then
  echo "error: podman is not installed: run \`make deps\` (apt package podman)" >&2
  exit 1
fi

runtime_line=""
ulimits_line=""
write_conf() {
  {
    echo "# Written by lab/containers-conf.sh: what this machine needs for the lab."
    echo "[containers]"
    [ -n "$ulimits_line" ] && echo "$ulimits_line"
    echo "[engine]"
    [ -n "$runtime_line" ] && echo "$runtime_line"
  } >"$out.tmp"
  mv "$out.tmp" "$out"
}
boots() {
  CONTAINERS_CONF="$out" podman run --rm --systemd=always "$image" /bin/true >/dev/null 2>"$out.err"
}

for runtime in "" runc; do
  if [ -n "$runtime" ]; then
    command -v "$runtime" >/dev/null || continue
    runtime_line="runtime = \"$runtime\""
  fi
  for ulimits in "" 'default_ulimits = ["nofile=8192:8192", "nproc=8192:8192"]'; do
    ulimits_line=$ulimits
    write_conf
    if boots; then
      rm -f "$out.err"
      limits=default; [ -z "$ulimits" ] || limits="nofile/nproc 8192"
      echo "lab podman settings: runtime ${runtime:-default}, ulimits $limits -> $out"
      exit 0
    fi
  done
done

# Nothing boots: say what to install or change, not only podman's last word.
# podman finds its helpers in its own directories; netavark runs the firewall
# tool through PATH, as this script does.
have() {
  command -v "$1" >/dev/null || [ -x "/usr/lib/podman/$1" ] || [ -x "/usr/libexec/podman/$1" ]
}
hints=()
have conmon || hints+=("conmon is missing (apt package conmon, a dependency of podman)")
have runc || hints+=("runc is missing (apt package runc): the default runtime crun fails under hybrid cgroups")
have netavark || hints+=("netavark is missing (apt package netavark): podman's network backend")
have aardvark-dns || hints+=("aardvark-dns is missing (apt package aardvark-dns): DNS of the lab networks")
if ! have iptables || ! have ip6tables; then
  hints+=("iptables/ip6tables are missing (apt package iptables, a Recommends that --no-install-recommends leaves out): netavark runs them to set up a network")
fi
have nft || hints+=("nft is missing (apt package nftables): netavark's nftables driver runs it")
echo "error: no podman setting tried here starts a systemd container; last error:" >&2
cat "$out.err" >&2
if [ ${#hints[@]} -gt 0 ]; then
  echo "what to install or change:" >&2
  printf '  - %s\n' "${hints[@]}" >&2
  echo "\`make deps\` installs these packages (APT_PACKAGES in the Makefile)." >&2
else
  echo "every program podman needs is installed; the error above is podman's own: see docs/troubleshooting.md" >&2
fi
exit 1
