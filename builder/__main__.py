"""``python -m builder``: the ``pybuild`` command (the build fast path first, then click)."""

from .fastpath import main

main()
