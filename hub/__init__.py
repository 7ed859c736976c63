"""podbay's hub side: configuration, GPU inventory, the quota book, the spawners and
the `podbay` command. Everything here runs beside JupyterHub."""
