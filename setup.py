"""Ship the top-level template folders inside the package as ``securekv.data.*``.

pyproject.toml holds the metadata; this file only exists because setuptools cannot map
extra folders into the package from pyproject.toml alone while also auto-finding packages.
"""
from setuptools import find_packages, setup

TEMPLATE_DIRS = ("pki", "configs", "systemd")

setup(
    packages=find_packages(include=["securekv", "securekv.*"])
    + [f"securekv.data.{name}" for name in TEMPLATE_DIRS],
    package_dir={f"securekv.data.{name}": name for name in TEMPLATE_DIRS},
    package_data={
        "": ["*.json", "*.yaml", "*.yml", "*.md", "*.service", "*.env", "*.conf", "*.tmpl", "*.proto", "*.txt", "*.nft", "*.rules"],
    },
    include_package_data=True,
)
