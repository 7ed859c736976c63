"""The slurm backend: workspaces on this development node (as the local backend runs them),
training pools on a Slurm cluster.

- `commands`: the `slurm:` section of podbay.yaml and Slurm's own commands;
- `plugin`: what the core asks of the engine, and capacity from Slurm's nodes;
- `jobs`: training jobs as `sbatch` batch jobs (Pyxis/Enroot for the image).
"""
