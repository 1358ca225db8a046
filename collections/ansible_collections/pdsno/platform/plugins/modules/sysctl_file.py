#!/usr/bin/python
# Copyright: PDSNO Platform engineers
# Apache License 2.0
"""Persist a set of kernel parameters in one sysctl.d file and apply them."""

from __future__ import annotations

DOCUMENTATION = r"""
module: sysctl_file
short_description: Own one sysctl.d file and keep the running kernel in line with it
description:
  - Writes every given kernel parameter to one file under C(/etc/sysctl.d),
    in sorted order, and sets each running value that differs, in one call.
  - Where M(ansible.posix.sysctl) takes one call per parameter, this takes
    one per host, and it repairs drift of the running values as well as of
    the file.
version_added: 0.1.0
options:
  path:
    description: The sysctl.d file this module owns; its whole content is replaced.
    type: path
    required: true
  settings:
    description: Parameter name (dotted, such as C(net.ipv4.tcp_syncookies)) to value.
    type: dict
    required: true
  apply:
    description: Set the running values too, not only the file.
    type: bool
    default: true
attributes:
  check_mode:
    description: Reports what it would write and set, and changes nothing.
    support: full
  diff_mode:
    description: Shows the file's content before and after.
    support: full
author:
  - PDSNO Platform engineers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Harden the kernel network parameters
  pdsno.platform.sysctl_file:
    path: /etc/sysctl.d/90-pdsno-base.conf
    settings:
      net.ipv4.tcp_syncookies: 1
      net.ipv4.conf.all.rp_filter: 1
"""

RETURN = r"""
file_changed:
  description: Whether the file was (or, in check mode, would be) rewritten.
  type: bool
  returned: always
applied:
  description: Parameters whose running value was (or would be) changed, with the value they had.
  type: dict
  returned: always
  sample: {"net.ipv4.tcp_syncookies": {"before": "0", "after": "1"}}
"""

import os
import re
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

PROC_SYS = Path("/proc/sys")
NAME_PATTERN = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")


def normalise(value: object) -> str:
    """sysctl prints multi-field values separated by tabs; compare on fields."""
    return " ".join(str(value).split())


def proc_path(name: str) -> Path:
    return PROC_SYS.joinpath(*name.split("."))


def render(settings: dict[str, object]) -> str:
    lines = ["# Managed by Ansible (pdsno.platform.sysctl_file); local changes are overwritten."]
    lines += [f"{name} = {normalise(value)}" for name, value in sorted(settings.items())]
    return "\n".join(lines) + "\n"


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "settings": {"type": "dict", "required": True},
            "apply": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    path: str = module.params["path"]
    settings: dict[str, object] = module.params["settings"]

    bad_names = [name for name in settings if not NAME_PATTERN.match(name)]
    if bad_names:
        module.fail_json(msg=f"Not a sysctl name: {', '.join(sorted(bad_names))}")
    unknown = [name for name in settings if not proc_path(name).exists()]
    if unknown:
        module.fail_json(
            msg=(
                f"This kernel has no parameter {', '.join(sorted(unknown))} "
                f"(no such file under {PROC_SYS}); remove it or check its spelling."
            )
        )

    wanted = render(settings)
    current = read_text(Path(path))
    file_changed = current != wanted
    if file_changed and not module.check_mode:
        handle, tmp_path = tempfile.mkstemp(dir=Path(path).parent, prefix=".sysctl-")
        with os.fdopen(handle, "w", encoding="utf-8") as tmp:
            tmp.write(wanted)
        Path(tmp_path).chmod(0o644)
        module.atomic_move(tmp_path, path)

    applied: dict[str, dict[str, str]] = {}
    if module.params["apply"]:
        for name, value in sorted(settings.items()):
            before = normalise(read_text(proc_path(name)) or "")
            after = normalise(value)
            if before == after:
                continue
            applied[name] = {"before": before, "after": after}
            if module.check_mode:
                continue
            try:
                proc_path(name).write_text(after, encoding="utf-8")
            except OSError as error:
                module.fail_json(
                    msg=f"Cannot set {name} to {after}: {error.strerror}. "
                    "A container cannot set parameters that belong to its host's kernel.",
                    applied=applied,
                )

    module.exit_json(
        changed=file_changed or bool(applied),
        file_changed=file_changed,
        applied=applied,
        diff={
            "before": current or "",
            "after": wanted,
            "before_header": path,
            "after_header": path,
        },
    )


if __name__ == "__main__":
    main()
