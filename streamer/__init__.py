"""streamer: live human parsing (M2FP) of video on a CPU.

Example:
    >>> from streamer import Pipeline, load_config
    >>> config = load_config("configs/file.yaml", overrides=["parser.engine=torch"])
    >>> for frame, result in Pipeline(config, source="clip.mp4"):
    ...     print(frame.index, result.class_pixel_counts())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "load_config", "__version__"]

if TYPE_CHECKING:
    from streamer.config import load_config
    from streamer.pipeline import Pipeline


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import streamer` stays cheap (no torch) for the CLI's --help.
    if name == "Pipeline":
        from streamer.pipeline import Pipeline

        return Pipeline
    if name == "load_config":
        from streamer.config import load_config

        return load_config
    raise AttributeError(name)
