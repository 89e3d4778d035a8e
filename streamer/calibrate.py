"""``python -m streamer.calibrate``: int8 calibration on your own footage.

The command keeps this name; the code is :mod:`streamer.parsing.calibrate`.

Example:
    python -m streamer.calibrate --model DIR --source cam1.mp4 photos/ --engine openvino
"""

import sys

from streamer.parsing.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
