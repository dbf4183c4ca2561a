"""`fbprop` and `python -m fbprop`: the command line, with Ctrl-C during start-up a clean exit too."""

import sys


def main() -> int:
    try:
        from fbprop.cli import main as cli_main  # numpy and fbprop import in ~0.3 s
    except KeyboardInterrupt:
        print("fbprop: interrupted", file=sys.stderr)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
