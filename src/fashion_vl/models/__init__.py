"""Pure ``nn.Module``s: they know nothing of Lightning, Hydra or datasets."""
