"""Member configuration: etcd's flag names; flags > env (SECUREKV_*, ETCD_*) > YAML file > defaults."""

from securekv.config.load import resolve
from securekv.config.model import URL, Config, parse_url
from securekv.config.options import OPTIONS, Option

__all__ = ["Config", "OPTIONS", "Option", "URL", "parse_url", "resolve"]
