"""Thin shim: `python cli.py COMMAND` (also usable as a torchrun script)."""
from pipeline.cli import main

if __name__ == "__main__":
    main()
