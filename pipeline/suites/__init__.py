"""Built-in suite SPECs of `sgaus suite --builtin NAME` (YAML files, read by pipeline/suite.py)."""
