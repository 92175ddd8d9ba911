"""The commands: one module per tool, each a ``main(argv)`` over the library's functions.

``commands`` is the ``medmamba SUBCOMMAND`` dispatcher, ``common`` the plumbing they share
(argument parsing, loading a model or workdir, one-line errors, Ctrl-C and SIGTERM). Each
tool still runs as ``python -m medmamba_jax.<tool>`` through a small module at that address.
Nothing below this package imports it.
"""
