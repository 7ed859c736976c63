"""The local backend, the embedded default: workspaces and jobs are processes of the hub's own
user on this machine, devices picked by podbay's quota book.

- `plugin`: what the core asks of the engine (`base.Backend`);
- `spawner`: the JupyterHub spawner (LocalProcessSpawner with podbay's mixin);
- `jobs`: training jobs as process groups.
"""
