"""GPU readers: the NVML backend, the simulated backend and the data they produce."""
