"""Render deployment artefacts (systemd unit, member config, firewall rules) from validated input."""
