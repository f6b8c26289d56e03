"""LightningModules (the task: losses, metrics, optimisation) and Lightning callbacks."""
