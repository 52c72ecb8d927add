"""erofs-stream-processor: compressed EROFS layers in, validated raw EROFS images out.

The package is laid out along the data's path: ``source`` (stdin) -> ``zstd_codec`` /
``gzip_codec`` (chosen by ``codecs``, imported only when chosen; ``framing`` holds what
both share) -> ``validator`` (EROFS ``superblock``) -> ``sink`` (stdout). ``decode``
wires them together; ``cli`` only dispatches to ``commands``. Around it: ``pack``,
``inspection``, ``containerd/`` (the ``config`` command's library) and ``convert/``.
"""

__version__ = "0.1.0"
PROG = "erofs-stream-processor"
