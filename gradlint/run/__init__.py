"""Running gradlint over paths: configuration, the runner, worker processes and the cache.

Everything the parent process does lives here, so it never imports torch: ``--version``,
``--help``, configuration errors and cache hits cost no torch import. User code runs only in
the workers.
"""
