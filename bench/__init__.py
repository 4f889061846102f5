"""The benchmark protocol: accuracy at equal storage, and speed, side by side (results: bench/results/README.md)."""
