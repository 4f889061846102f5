"""``python -m haba_core`` and the ``haba`` command: the CLI as a program. A process that distills or trains
experts first restarts itself under jemalloc when it is installed (``haba_core.memory``: the loops reuse freed
memory without glibc's page faults or heap growth), before anything heavy is imported; ``cli.main`` called as a
library never does."""

import sys

from haba_core.memory import restart_under_jemalloc


def program() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("distill", "experts"):
        restart_under_jemalloc(sys.argv[1:])
    from haba_core.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(program())
