"""The `clobi` command: one small module per command group, assembled in `main`.

Each group module exposes `register(subparsers)`; handlers take the parsed arguments and
return an exit code (`clobi.cli.exitcodes.ExitCode`). Errors are raised as `ClobiError`s and
turned into messages and exit codes in one place, `main.main`.
"""
