"""``python3 -m bench``: the same as ``python3 -m bench.run``."""

from bench.run import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    main()
