"""``python -m denseclip.benchmark``: see ``denseclip.benchmark.cli``."""
from .cli import main

main()
