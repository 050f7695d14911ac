"""``python -m builder``: the ``pybuild`` command."""

import os
import sys

from .cli import main

try:
    main()
except SystemExit as exc:
    build_cmd = sys.modules.get("builder.build_cmd")
    if exc.code in (None, 0) and build_cmd is not None and build_cmd.finished:
        # A finished build has written and closed everything it opened: skip the
        # interpreter's teardown (freeing every module and object one by one, ~30 ms,
        # a tenth of a cached rebuild).
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            os._exit(120)  # what the interpreter's own teardown exits with here
        os._exit(0)
    raise
