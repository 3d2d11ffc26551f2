"""Loading: finding the user's files, importing them in a sandbox, discovering the models to
check and building them. Imports torch only inside functions, in the worker that runs them.

The path of a file through the stage: ``files`` (what a command line or a directory walk names),
``sandbox`` (importing it, and running its code later, without leaking into the process),
``discovery`` (the models it defines), ``build`` (making one); ``tracebacks`` shows what the
user's code raises in the user's terms. This facade names what the other stages use.
"""

from gradlint.load.arguments import (
    Resolution,
    config_tables,
    find_arguments,
    given_argument,
    missing_arguments,
)
from gradlint.load.build import check_unknown, instantiate
from gradlint.load.callsites import Repository
from gradlint.load.discovery import Discovery, Skipped, Target, discover
from gradlint.load.files import (
    SKIP_DIRS,
    find_project_root,
    import_roots,
    iter_python_files,
    may_define_model,
    package_parts,
    parse_target_arg,
)
from gradlint.load.sandbox import forget_user_modules, import_file, user_code
from gradlint.load.tracebacks import format_user_traceback, innermost_line, innermost_user_frame

__all__ = [
    "SKIP_DIRS", "Discovery", "Repository", "Resolution", "Skipped", "Target", "config_tables", "discover",
    "find_arguments", "given_argument", "missing_arguments", "find_project_root", "forget_user_modules",
    "check_unknown", "format_user_traceback", "import_file", "import_roots", "innermost_line",
    "innermost_user_frame", "instantiate",
    "iter_python_files", "may_define_model", "package_parts", "parse_target_arg", "user_code",
]
