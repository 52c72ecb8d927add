"""One module per subcommand, each with ``add_arguments`` and ``run`` (see ``cli``)."""
