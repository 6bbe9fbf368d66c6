"""CLI commands, one module each; every module defines `command` (a click command)."""
