"""Hardware models: workload IR, energy model, simulated accelerator and neuromorphic targets."""
