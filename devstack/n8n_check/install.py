"""The pinned n8n, installed from npm into a folder of the project (`.n8n-check/n8n`),
once: a later run finds it and skips the install (it takes minutes)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

# The version the shipped workflow is proven against (examples/n8n/README.md).
N8N_VERSION = "1.123.81"
# n8n's own pins that do not install on every machine:
# - xlsx: n8n asks for a tarball on SheetJS's CDN; 0.18.5 is the last one on npm.
# - isolated-vm: 6.x (the Code node's sandbox) builds only on Node 22+; 5.0.4 builds on 20.
OVERRIDES = {"xlsx": "0.18.5", "isolated-vm": "5.0.4"}
# Native modules built for the installed Node after the overrides are applied.
REBUILD = ("sqlite3", "isolated-vm")
# n8n 1.123 starts on Node 20.19 or later (its package says >=20.19 <= 24.x).
MIN_NODE = (20, 19)
_INSTALL_TIMEOUT_SECONDS = 1800


class InstallError(RuntimeError):
    """n8n cannot be installed or used here; the message says what to do."""


def n8n_binary(folder: Path) -> Path:
    return folder / "node_modules" / ".bin" / "n8n"


def installed_version(folder: Path) -> str:
    manifest = folder / "node_modules" / "n8n" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return ""


def check_node() -> str:
    """The Node.js version, refused when n8n cannot run on it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise InstallError("node and npm are needed for the n8n check (Node 20.19 or later)")
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    found = re.match(r"v(\d+)\.(\d+)", version)
    if not found or (int(found.group(1)), int(found.group(2))) < MIN_NODE:
        raise InstallError(f"Node {version} is too old for n8n {N8N_VERSION}: use 20.19 or later")
    return version


def ensure_n8n(folder: Path) -> Path:
    """The n8n binary of `folder`, installing the pinned version there first if needed."""
    check_node()
    if installed_version(folder) == N8N_VERSION and n8n_binary(folder).exists():
        log.info("n8n %s already installed in %s", N8N_VERSION, folder)
        return n8n_binary(folder)
    found = installed_version(folder)
    if found:
        log.info("n8n %s in %s is not the pinned %s: reinstalling", found, folder, N8N_VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "bridge-n8n-check",
        "private": True,
        "dependencies": {"n8n": N8N_VERSION},
        "overrides": OVERRIDES,
    }
    (folder / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("installing n8n %s from npm into %s (a few minutes, once)", N8N_VERSION, folder)
    log_path = folder / "install.log"
    with log_path.open("w") as handle:
        for command in (
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=warn"],
            ["npm", "rebuild", *REBUILD],
        ):
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            done = subprocess.run(
                command,
                cwd=folder,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=_INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
            if done.returncode != 0:
                raise InstallError(f"`{' '.join(command)}` failed in {folder}: see {log_path}")
    if installed_version(folder) != N8N_VERSION:
        raise InstallError(f"npm did not install n8n {N8N_VERSION} in {folder}: see {log_path}")
    return n8n_binary(folder)


def use_existing(folder: Path) -> Path:
    """An n8n installed elsewhere (N8N_CHECK_INSTALL): used as it is, if it is the pin."""
    check_node()
    found = installed_version(folder)
    if found != N8N_VERSION or not n8n_binary(folder).exists():
        raise InstallError(
            f"N8N_CHECK_INSTALL={folder} holds n8n {found or 'nothing'}, not {N8N_VERSION}"
        )
    return n8n_binary(folder)
