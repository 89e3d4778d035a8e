"""``run_stream.py batch``: many files and streams on a process pool or Ray."""
