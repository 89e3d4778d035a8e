"""Carrying an MP4 source's audio priming (encoder delay) into a Matroska output.

Example:
    >>> template = matroska_template(audio_stream, first_packet)  # None: nothing to carry
"""

from __future__ import annotations

import io
import logging
import struct
from typing import Any

import av

__all__ = ["matroska_template"]

log = logging.getLogger("streamer.sinks")


# Matroska codec ids of audio that MP4 files carry with priming samples to skip.
_MATROSKA_AUDIO = {"aac": "A_AAC", "mp3": "A_MPEG/L3", "mp2": "A_MPEG/L2", "ac3": "A_AC3",
                   "eac3": "A_EAC3"}


def _ebml(element_id: str, payload: bytes) -> bytes:
    return bytes.fromhex(element_id) + (1 << 56 | len(payload)).to_bytes(8, "big") + payload


def _ebml_uint(element_id: str, value: int) -> bytes:
    return _ebml(element_id, value.to_bytes(8, "big"))


def matroska_template(stream: Any, first: Any) -> Any:
    """An audio stream like ``stream`` that also carries the source's priming as its codec
    delay, to copy into a Matroska output; ``None`` when there is nothing to carry over.

    An MP4 skips an AAC/MP3 encoder's priming samples with its edit list, which FFmpeg hands
    on as "skip samples" on the first packet. Matroska keeps them as the track's CodecDelay,
    which FFmpeg writes from the stream's ``initial_padding``; PyAV cannot set that, but it
    copies it from a Matroska input. So this builds the smallest such input: a header with one
    audio track (the source's codec, its private data and the delay) and its first packet.
    """
    if not first.has_sidedata("skip_samples"):
        return None
    skip = int.from_bytes(bytes(first.get_sidedata("skip_samples"))[:4], "little")
    cc = stream.codec_context
    codec_id = _MATROSKA_AUDIO.get(cc.codec.canonical_name)
    if skip <= 0 or codec_id is None or not cc.sample_rate or not cc.channels:
        return None
    header = _ebml("1A45DFA3", _ebml_uint("4286", 1) + _ebml_uint("42F7", 1)
                   + _ebml_uint("42F2", 4) + _ebml_uint("42F3", 8) + _ebml("4282", b"matroska")
                   + _ebml_uint("4287", 4) + _ebml_uint("4285", 2))
    track = (_ebml_uint("D7", 1) + _ebml_uint("73C5", 1) + _ebml_uint("83", 2)
             + _ebml("86", codec_id.encode())
             + (_ebml("63A2", bytes(cc.extradata)) if cc.extradata else b"")
             + _ebml_uint("56AA", round(skip * 1_000_000_000 / cc.sample_rate))  # CodecDelay, ns
             + _ebml("E1", _ebml("B5", struct.pack(">d", float(cc.sample_rate)))
                     + _ebml_uint("9F", cc.channels)))
    block = b"\x81\x00\x00\x80" + bytes(first)  # track 1, time 0, keyframe
    segment = (_ebml("1549A966", _ebml_uint("2AD7B1", 1_000_000))
               + _ebml("1654AE6B", _ebml("AE", track))
               + _ebml("1F43B675", _ebml_uint("E7", 0) + _ebml("A3", block)))
    try:
        made = av.open(io.BytesIO(header + _ebml("18538067", segment)), format="matroska")
    except av.FFmpegError as exc:
        log.warning("audio priming not carried over: %s", exc)
        return None
    if not made.streams.audio:
        made.close()
        return None
    return made.streams.audio[0]
