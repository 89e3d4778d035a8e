"""Rotating recordings; the code lives in :mod:`streamer.io.sinks.segments` (this path stays).

Example:
    >>> from streamer.io.segments import SegmentedVideoSink, list_segments
"""

from streamer.io.sinks.segments import SegmentedVideoSink, list_segments, segment_name

__all__ = ["SegmentedVideoSink", "list_segments", "segment_name"]
