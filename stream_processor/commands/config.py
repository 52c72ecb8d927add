"""``erofs-stream-processor config``: print the containerd snippet, or check a config.toml.

All decisions live in ``stream_processor.containerd_config``; this module only
maps options onto it and picks the exit status.
"""

from __future__ import annotations

import argparse
import sys

from stream_processor import PROG, log
from stream_processor import containerd_config as cc

EXIT_CHECK_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the config.toml snippet that registers this processor with containerd, "
        "or check an existing config.toml (--check). The media types containerd hands a "
        "processor depend on its version and differ; see the README's compatibility matrix."
    )
    parser.add_argument(
        "--containerd-version",
        metavar="VERSION",
        help=f"containerd release the node runs, e.g. 2.3 or 1.6.20 (default: {cc.LATEST}); "
        f"known: {', '.join(cc.KNOWN_VERSIONS)}",
    )
    parser.add_argument(
        "--differ",
        choices=cc.DIFFERS,
        default=cc.STOCK,
        help=f"the node's erofs differ: {cc.STOCK} (default) or one patched as in "
        f"containerd PR 12506 ({cc.PR12506})",
    )
    parser.add_argument(
        "--routes",
        metavar="LIST",
        help="comma-separated media types to accept: "
        f"{', '.join(cc.ROUTE_NAMES)} or full media type strings (default: what the version "
        "sends EROFS layers as)",
    )
    parser.add_argument(
        "--path",
        help="executable containerd should start (default: the installed "
        f"{PROG} script, else this Python with -m stream_processor)",
    )
    parser.add_argument(
        "--log-file",
        default=cc.DEFAULT_LOG_FILE,
        help=f"value of {log.ENV_FILE} in env (default {cc.DEFAULT_LOG_FILE}; '' for none)",
    )
    parser.add_argument(
        "--log-level",
        choices=log.CHOICES,
        help=f"value of {log.ENV_LEVEL} in env (default: unset, i.e. failures only)",
    )
    parser.add_argument(
        "--platform",
        help=f"unpack platform for the transfer service (default: this host, {cc.host_platform()})",
    )
    parser.add_argument("--check", metavar="FILE", help="check FILE instead of printing a snippet")
    parser.add_argument(
        "--skip-path-check",
        action="store_true",
        help="with --check: do not require the registered path to exist here "
        "(for templates checked before installing)",
    )


def _routes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part for part in (p.strip() for p in text.split(",")) if part]


def run(args: argparse.Namespace) -> int:
    profile = cc.profile_for(args.containerd_version, args.differ)
    if args.check:
        config = cc.load_config(args.check)
        report = cc.check_config(
            config, profile, source=args.check, check_path=not args.skip_path_check
        )
        sys.stdout.write(report.render())
        return EXIT_CHECK_FAILED if report.problems else 0
    options = cc.SnippetOptions(
        profile=profile,
        executable=cc.find_executable(args.path),
        routes=cc.resolve_routes(_routes(args.routes), profile),
        log_file=args.log_file or None,
        log_level=args.log_level,
        platform=args.platform or cc.host_platform(),
    )
    sys.stdout.write(cc.render(options))
    return 0
