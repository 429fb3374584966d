"""Layer 6, the commands: the ``kdhub`` command line and what only it does.

- :mod:`~kdhub.commands.cli`: the parser, built from the commands registered through the
  ``kdhub_register_commands`` hook, and error handling (one line, exit code 2);
- :mod:`~kdhub.commands.builtin`: the built-in commands (``run``, ``study``, ``list`` ...), registered
  through that hook like any plugin's;
- :mod:`~kdhub.commands.browse`: ``list`` and ``show`` from the catalog cache (no plugin imported);
- :mod:`~kdhub.commands.demo`, :mod:`~kdhub.commands.dryrun`, :mod:`~kdhub.commands.export`,
  :mod:`~kdhub.commands.evaluate`: the demo, ``run --dry-run``, ``export`` and ``evaluate``.

May import every layer below; nothing below imports it.
"""
