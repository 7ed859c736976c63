"""The kubernetes backend: workspaces as pods (KubeSpawner), training jobs as batch/v1 Jobs
(queued by Kueue where configured), devices placed by the NVIDIA device plugin and the
kube-scheduler, capacity read from the cluster.

- `settings`: the `kubernetes:` section of podbay.yaml (how the GPU operator offers each
  pool's GPUs, resources per profile, homes);
- `objects`: pure builders, podbay's config and a request in, Kubernetes objects out;
- `capacity`: free GPUs per profile and pool from Node and Pod objects, as the scheduler counts;
- `api`, `watch`: the API client and the watches that keep the cluster view current;
- `manifests`: what the Zero to JupyterHub chart lacks (`podbay k8s manifests`);
- `plugin`: what the core asks of the engine (`base.Backend`);
- `spawner`: the JupyterHub spawner (KubeSpawner with podbay's mixin);
- `jobs`: training jobs as batch/v1 Jobs.
"""
