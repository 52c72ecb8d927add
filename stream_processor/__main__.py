"""``python -m stream_processor``: the same entry point as the installed executable."""

from stream_processor.cli import run

run()
