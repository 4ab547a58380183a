"""``python -m vsr_async``: the ``vsr-async`` command line."""

from ._cli import main

if __name__ == "__main__":
    main()
