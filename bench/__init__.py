"""The benchmark protocol and its studies: profiles (``python -m bench.run``), the findings, the validation searches
and the measurements, each a module run with ``python -m bench.<name>`` that writes its results under one provenance
header (``bench.provenance``; results: bench/results/README.md)."""
