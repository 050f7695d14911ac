"""Helpers of the test suites only (those the benchmarks share live in ``testkit``).

- ``disks``: a small real filesystem (tmpfs with ``size=``) for full-disk cases.
- ``sandbox_steps``: run sandbox steps over a busybox root in the sandbox tests.
- ``cli``: run ``pybuild`` as a process; check that it fails with one clean line.
"""
