"""`python -m kshot` (and `torchrun ... -m kshot`): the `kshot` command."""

from kshot.cli import main

if __name__ == "__main__":  # not when a spawned worker re-imports the main module
    main()
