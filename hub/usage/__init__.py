"""GPU usage: utilisation read from DCGM, Prometheus or NVML, matched to what people hold;
the idle rules that give unused GPUs back; showback (held and used GPU-hours); /metrics."""
