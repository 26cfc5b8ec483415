"""Node.js for the oracles written in JavaScript: the machine's node, and `npm ci` of a
folder of tests/support with its pinned lockfile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def node_binary() -> str:
    """The machine's node, if it is one Fastify 5 and connect-node support (20 or newer)."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed (.ci/run installs it)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        raise AssertionError(f"{node} is {version}; the oracles need Node 20 or newer")
    return node


def npm_ci(folder: Path) -> None:
    """`npm ci` in `folder` when its node_modules is missing or older than its lockfile."""
    marker = folder / "node_modules" / ".package-lock.json"  # npm writes it on every install
    if marker.exists() and marker.stat().st_mtime >= (folder / "package-lock.json").stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise AssertionError("npm is not installed (.ci/run installs it)")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"npm ci in {folder} failed:\n{done.stderr}")
