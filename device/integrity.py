"""Integrity of a model bundle: the sha256 of its model file and of its manifest.

``sha256`` in model.json covers the model file; ``manifest_sha256`` covers every other key of the
manifest (:func:`seal_manifest`), so a hand edit to a setting is refused at load
(:func:`device.bundle.load_bundle`). Hex strings, lower case.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path


def sha256_hasher():
    """A SHA-256 hasher. CPython's own implementation rather than hashlib's OpenSSL one:
    hashlib maps libcrypto (~3.4 MiB of RSS) into a daemon that has no other use for it
    unless MQTT over TLS is on; hashing a model of a few KiB is no faster with it."""
    for name in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        try:
            return importlib.import_module(name).sha256()
        except ImportError:
            continue
    import hashlib

    return hashlib.sha256()


def sha256_of(path: Path) -> str:
    digest = sha256_hasher()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 (hex) of the manifest's canonical JSON without its ``manifest_sha256`` key."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = sha256_hasher()
    digest.update(text.encode("ascii"))
    return digest.hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """The manifest with ``manifest_sha256`` set for its current content."""
    return {**manifest, "manifest_sha256": manifest_digest(manifest)}
