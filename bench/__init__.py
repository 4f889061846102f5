"""The benchmark protocol (DESIGN §5): accuracy at equal storage, and speed, side by side."""
