"""Registering this processor with containerd: the ``config`` command's library.

``versions`` holds what each containerd release and differ routes (a table,
docs/containerd.md section 1); ``routes`` turns that into the media types to
accept; ``render`` writes the config.toml snippet (``platforms``,
``executable`` and ``configfile`` supply its parts); ``check`` judges an
existing config, ``merge`` edits one in place and ``daemon`` asks a running
containerd. Imported only by the ``config`` command and tests, never on the
decode path.
"""
