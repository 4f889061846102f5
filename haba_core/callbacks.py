"""What observes a distillation: the hooks the engine's ``Distiller`` calls as a run goes.

A callback never changes the run: it reads the Distiller ``d`` it is handed (``d.cfg``, ``d.step``, ``d.synset``,
...) and writes elsewhere. The run folder (``runfolder.RunFolder``) is one; the optional logger sinks
(``haba_core.loggers``) and the tutorials' live plots are others. This module sits below both the engine and the
sinks, so the engine can build sinks from a config without an import cycle.
"""

from __future__ import annotations


class Callback:
    """No-op hooks; subclasses override those they need. ``d`` is the ``engine.Distiller``."""

    def on_start(self, d) -> None: ...

    def on_step(self, d, step: int, logs: dict) -> None:
        """After step ``step``; ``logs`` holds ``step``, ``time_s``, peak memory and the method's named losses."""

    def on_eval(self, d, step: int, results: dict) -> None:
        """After an in-run evaluation; ``results["nets"][name]`` holds ``mean`` and ``std`` accuracy in [0, 1]."""

    def on_snapshot(self, d, step: int) -> None: ...

    def on_checkpoint(self, d, step: int) -> None: ...

    def on_end(self, d, state: str, error: str | None) -> None: ...
