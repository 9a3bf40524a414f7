"""Only dataplane/vhost_user/ reads or writes a vhost-user header: nothing else in the tree frames messages."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALLOWED = (ROOT / "dataplane" / "vhost_user", ROOT / "tests" / "vhost_user")

# The header's struct format ("=III": request, flags, size), its size constant and its parser:
# only in vhost_user/.
PATTERNS = {
    "header struct format": re.compile(r"""["'][=<@]?III["']"""),
    "header size constant": re.compile(r"\bVHOST_USER_HDR_SIZE\b"),
    "header parser": re.compile(r"\bHeader\.parse\b"),
}
# Raw SCM_RIGHTS socket calls: other packages pass fds for their own purposes (lcores, memory),
# but the code around vhost-user (back-end, front-end, their doubles and tests) goes through an Endpoint.
FD_FRAMING = re.compile(r"\b(recv_fds|send_fds)\b")
VHOST_USER_SIDES = ("vhost", "virtio", "vhost_frontend.py", "vhost_backend.py")


def _sources():
    for top in ("dataplane", "tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if not any(path.is_relative_to(a) for a in ALLOWED):
                yield path


def test_no_header_decoding_outside_vhost_user():
    found = []
    for path in _sources():
        patterns = dict(PATTERNS)
        if any(part in VHOST_USER_SIDES for part in path.relative_to(ROOT).parts):
            patterns["fd framing"] = FD_FRAMING
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern in patterns.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()}")
    assert not found, "vhost-user framing outside dataplane/vhost_user/:\n" + "\n".join(found)
