"""Benchmarks of the training and evaluation paths (``scripts/bench_*.py`` are their command lines).

Real modules at the sizes a config gives, random weights, synthetic data; CUDA-synchronised medians,
FLOPs from ``torch.utils.flop_counter``, JSON out. Everything also runs on CPU (tiny configs in tests).
"""
