"""Frames in and out: sources (file, RTSP, webcam, images), the frame buffers, the sinks."""
