"""podbay's hub side: configuration, GPU inventory, the device ledger, the spawners and
the `podbay` command. Everything here runs beside JupyterHub."""
