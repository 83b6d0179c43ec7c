"""Renders tdx-stress run directories; never runs the machine."""
