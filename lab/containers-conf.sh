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
echo "error: no podman setting tried here starts a systemd container; last error:" >&2
cat "$out.err" >&2
exit 1
