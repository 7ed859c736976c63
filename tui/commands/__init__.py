"""The client's commands, one module per subject; tui/cli.py wires them into `podbay`."""
