"""pybuild's benchmark harness: ``python3 -m bench <area>`` (see bench/README.md).

Each run measures the machine's own limits (hashing, disk, page cache) and the peer
(CNCF Distribution, buildah, docker build, skopeo) in the same run, then pybuild when its
side exists, and reports a table plus a JSON file in ``bench/results/``.
"""
