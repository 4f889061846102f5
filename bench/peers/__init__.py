"""The official codes run side by side with ours on this machine: one module a peer repository
(``dc_code``: DatasetCondensation's DM, DC and DSA; ``haba_code``: the official HaBa code; ``mtt_code``:
mtt-distillation), the shared harness in ``common``, and the side-by-side table in ``bench.peer_speed``."""
