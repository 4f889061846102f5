import sys

from haba_core.cli import main

sys.exit(main())
