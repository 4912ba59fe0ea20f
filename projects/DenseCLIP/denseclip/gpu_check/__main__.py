"""``python -m denseclip.gpu_check``: see ``denseclip.gpu_check.cli``."""
import sys

from .cli import main

sys.exit(main())
