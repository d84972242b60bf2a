"""``python -m wa_cli`` is the same as the ``wa`` command."""

from wa_cli.cli.app import main

if __name__ == "__main__":
    main()
