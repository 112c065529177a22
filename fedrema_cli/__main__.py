"""``python -m fedrema_cli``: the same entry point as the ``fedrema`` command."""

from fedrema_cli.app import main

if __name__ == "__main__":
    main()
