"""The built-in presets, as data: ``search_spaces/<name>.yaml`` (report, search, demo), in the grammar of a
``--space`` file (``study.space``). No code lives here."""
