"""Command line: ``python -m fastnorm info`` and ``python -m fastnorm bench [options]``.

``main`` is also the ``fastnorm`` console script; with no subcommand it prints the
configuration, like ``info``.
"""

import argparse
import os
import sys


def _info(args):
    import fastnorm

    fastnorm.show_config()
    return 0


def _bench(args):
    from fastnorm import bench

    return bench.run(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastnorm",
        description="fastnorm: LayerNorm, RMSNorm, BatchNorm and GroupNorm for NumPy arrays.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{info,bench}")
    info = commands.add_parser("info", help="print the configuration (kernel family, threads, versions)")
    info.set_defaults(handler=_info)
    bench = commands.add_parser(
        "bench",
        help="time fastnorm against a memory copy, NumPy, PyTorch and ONNX Runtime",
        description="Time fastnorm against a memory copy of the same bytes, the NumPy formula, "
        "and PyTorch / ONNX Runtime when installed.  Progress goes to stderr, the table to stdout.",
    )
    from fastnorm.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(handler=_bench)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", _info)
    try:
        return handler(args)
    except ValueError as error:  # bad option values: say which, without a traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
