"""The docker backend (one GPU server): workspaces and jobs are containers, devices picked by
podbay's quota book and handed over as Docker device requests.

- `plugin`: what the core asks of the engine (`base.Backend`);
- `settings`: the `docker:` section of podbay.yaml;
- `network`: the bridge network workspaces and jobs share, and container hardening;
- `images`: the Docker client, and building the catalog's images (`podbay images`);
- `spawner`: the JupyterHub spawner (DockerSpawner with podbay's mixin);
- `jobs`: training jobs as containers.
"""
