"""The training recipes, each a module with ``get_config()``.

They ship with the package so that an installed copy can train without the checkout;
``configs/<name>.py`` in the repository are the same recipes as files for
``train.py --config=``.
"""
