"""sbctl: the one operator CLI. Every command takes `--env` and `--json`."""
