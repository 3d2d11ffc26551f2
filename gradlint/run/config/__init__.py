"""``[tool.gradlint]`` in pyproject.toml: finding it, checking it, and merging it with the command line.

Every value comes from one of three places, each overriding the one before: gradlint's
default, the configuration file, the command line. ``Config`` records where each value came
from, so ``gradlint config`` can say why a value is what it is.

Every key is checked. An unknown key, an unknown rule or a value of the wrong type is a
``ConfigError`` at the key's file and line: a misspelt option that silently does nothing is
worse than an error. tomllib reports no positions, so ``key_lines`` finds them in the text.

Paths in the file (``targets``, ``include``, ``exclude``, ``per-file-ignores``) are relative
to the file's directory, so the configuration means the same from whichever directory
gradlint runs. The package imports no torch until it checks rule codes.

``model`` holds ``Config`` and ``TargetSpec``; ``globs`` the matching of paths and rules;
``toml_text`` and ``toml_lines`` parsing, writing and locating TOML; ``validate`` the check of
every key; ``resolve`` finding, loading, merging and describing. This facade names what
callers use.
"""

from gradlint.run.config.model import COMMAND_LINE, DEFAULT, SEVERITIES, Config, TargetSpec
from gradlint.run.config.resolve import CLI_OPTIONS, describe, find, from_command_line, load, merge, project_config
from gradlint.run.config.toml_lines import key_lines

__all__ = ["CLI_OPTIONS", "COMMAND_LINE", "DEFAULT", "SEVERITIES", "Config", "TargetSpec", "describe", "find",
           "from_command_line", "key_lines", "load", "merge", "project_config"]
