"""The official codes run side by side with ours on this machine: one module a peer repository (``dc_code``:
DatasetCondensation's DM, DC and DSA; ``haba_code``: the official HaBa code; ``mtt_code``: mtt-distillation), the
harness they share (``common``; ``trajectory_codes`` for the two MTT codes), our side of each row (``ours``), and the
side-by-side table in ``bench.peer_speed``."""
