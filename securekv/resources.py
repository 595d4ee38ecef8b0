"""Locate the shipped template folders whether securekv runs installed or from a checkout."""

from __future__ import annotations

from pathlib import Path

TEMPLATE_KINDS = ("pki", "configs", "systemd")


def template_dir(kind: str) -> Path:
    """Return the folder holding the templates of ``kind`` (one of TEMPLATE_KINDS)."""
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"unknown template kind {kind!r}; expected one of {', '.join(TEMPLATE_KINDS)}")
    package_root = Path(__file__).resolve().parent
    installed = package_root / "data" / kind
    if installed.is_dir():
        return installed
    checkout = package_root.parent / kind
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"securekv template folder {kind!r} not found (looked in {installed} and {checkout})")


def template_file(kind: str, name: str) -> Path:
    path = template_dir(kind) / name
    if not path.is_file():
        raise FileNotFoundError(f"securekv template {kind}/{name} not found at {path}")
    return path
