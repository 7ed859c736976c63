"""What the tests run in place of what cannot run here, each as faithful as upstream's code
and documents allow: an emulated Kubernetes API server (k8s_emulator) and the cluster around
it (k8s_cluster: scheduler, kubelet, controllers, admission), a DCGM exporter
(dcgm_exporter) serving recorded metrics. slurm_cluster runs a real Slurm."""
