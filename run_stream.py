#!/usr/bin/env python3
"""Parse people in video on a CPU: see `python run_stream.py --help`."""

import sys

from streamer.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
