"""``erofs-stream-processor config``: print the snippet, merge it, or check a config.

All decisions live in the ``stream_processor.containerd`` package (``render``
for the snippet, ``check``, ``merge`` and ``daemon``); this module only maps
options onto them, refuses options that would be ignored, and picks the exit
status.
"""

from __future__ import annotations

import argparse
import sys

from stream_processor import PROG, log, mediatypes
from stream_processor.containerd import check, configfile, platforms, render, routes, versions
from stream_processor.containerd.executable import find_executable
from stream_processor.errors import ProcessorError, UsageError
from stream_processor.signals import unwinds_on_signals

EXIT_CHECK_FAILED = 1

# Options that only shape the generated snippet (refused with --check/--check-daemon),
# and those that belong to one mode only.
GENERATION = ("routes", "path", "log_file", "log_level", "platform")
MERGE_ONLY = ("dry_run", "backup", "force")
DAEMON_ONLY = ("containerd", "address", "daemon_config")


class CheckFailed(ProcessorError):
    exit_code = EXIT_CHECK_FAILED
    reason = "check-failed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the config.toml snippet that registers this processor with containerd, "
        "merge it into an existing config.toml (--merge), or check a config.toml (--check) "
        "or what a containerd really loaded (--check-daemon). The media types containerd "
        "hands a processor depend on its version and differ; see the README's "
        "compatibility matrix."
    )
    parser.add_argument(
        "--containerd-version",
        metavar="VERSION",
        help=f"containerd release the node runs, e.g. 2.3 or 1.6.20 (default: {versions.LATEST}); "
        f"known: {', '.join(versions.KNOWN_VERSIONS)}",
    )
    parser.add_argument(
        "--differ",
        choices=versions.DIFFERS,
        default=versions.STOCK,
        help=f"the node's erofs differ: {versions.STOCK} (default) or one patched as in "
        f"containerd PR 12506 ({versions.PR12506})",
    )
    parser.add_argument(
        "--routes",
        metavar="LIST",
        help="comma-separated media types to accept: "
        f"{', '.join(mediatypes.SHORT_NAMES)} or full media type strings "
        "(default: what the version sends EROFS layers as)",
    )
    parser.add_argument(
        "--path",
        help="absolute path of the executable containerd should start (default: the "
        f"{PROG} script this command was started as, else this Python with -m stream_processor)",
    )
    parser.add_argument(
        "--log-file",
        help=f"value of {log.ENV_FILE} in env (default {render.DEFAULT_LOG_FILE}; '' for none)",
    )
    parser.add_argument(
        "--log-level",
        choices=log.CHOICES,
        help=f"value of {log.ENV_LEVEL} in env (default: unset, i.e. failures only)",
    )
    parser.add_argument(
        "--platform",
        help=f"unpack platform for the transfer service, linux/ARCH (default: this host, "
        f"{platforms.host_platform()})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", metavar="FILE", help="check FILE instead of printing a snippet")
    mode.add_argument(
        "--merge",
        metavar="FILE",
        help="add the registration to FILE (an existing config.toml), keeping its other "
        "settings and comments; the old file is kept as FILE.bak",
    )
    mode.add_argument(
        "--check-daemon",
        action="store_true",
        help="check the configuration containerd really loads (`containerd config dump`)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="with --merge: print a unified diff, write nothing"
    )
    parser.add_argument(
        "--backup",
        metavar="SUFFIX",
        help="with --merge: keep the old file as FILE+SUFFIX (default .bak)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --merge: also change settings the operator set differently",
    )
    parser.add_argument(
        "--containerd",
        metavar="PATH",
        help="with --check-daemon: the containerd binary (default: containerd on PATH)",
    )
    parser.add_argument(
        "--daemon-config",
        metavar="FILE",
        help="with --check-daemon: the config file containerd is started with "
        "(default: containerd's own, /etc/containerd/config.toml)",
    )
    parser.add_argument(
        "--address",
        metavar="SOCKET",
        help="with --check-daemon: also ask the daemon on SOCKET (ctr plugins ls) whether "
        "the erofs plugins loaded, and check the processor is executable by its user",
    )
    parser.add_argument(
        "--skip-path-check",
        action="store_true",
        help="with --check, --merge or --check-daemon: do not require the registered path to "
        "exist here (for templates checked before installing)",
    )


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _refuse(args: argparse.Namespace, dests: tuple[str, ...], mode: str) -> None:
    given = [_option(d) for d in dests if getattr(args, d) not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be used {mode}")


def _mode(args: argparse.Namespace) -> str:
    if args.check:
        _refuse(args, GENERATION, "with --check (it checks the file as it is)")
    if args.check_daemon:
        _refuse(args, GENERATION, "with --check-daemon (it checks what containerd loads)")
    if not args.merge:
        _refuse(args, MERGE_ONLY, "without --merge")
    if not args.check_daemon:
        _refuse(args, DAEMON_ONLY, "without --check-daemon")
    if not (args.check or args.merge or args.check_daemon):
        _refuse(args, ("skip_path_check",), "without --check, --merge or --check-daemon")
    return (
        "check" if args.check else "merge" if args.merge else "daemon" if args.check_daemon else ""
    )


def _routes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part for part in (p.strip() for p in text.split(",")) if part]


def _snippet_options(args: argparse.Namespace, profile: versions.Profile) -> render.SnippetOptions:
    platform = (
        platforms.check_platform(args.platform) if args.platform else platforms.host_platform()
    )
    executable = find_executable(args.path, invoked=sys.argv[0])
    if executable.note:
        sys.stderr.write(f"{PROG}: {executable.note}\n")
    return render.SnippetOptions(
        profile=profile,
        executable=executable,
        routes=routes.resolve_routes(_routes(args.routes), profile),
        log_file=render.DEFAULT_LOG_FILE if args.log_file is None else (args.log_file or None),
        log_level=args.log_level,
        platform=platform,
    )


def _report(report: check.CheckReport) -> int:
    sys.stdout.write(report.render())
    return EXIT_CHECK_FAILED if report.problems else 0


@unwinds_on_signals  # --merge's staged temporaries are removed on SIGTERM/SIGHUP/SIGINT
def run(args: argparse.Namespace) -> int:
    mode = _mode(args)
    profile = versions.profile_for(args.containerd_version, args.differ)
    if mode == "check":
        config = configfile.load_config(args.check)
        return _report(
            check.check_config(
                config, profile, source=args.check, check_path=not args.skip_path_check
            )
        )
    if mode == "daemon":
        from stream_processor.containerd import daemon

        report = daemon.check_daemon(
            profile,
            containerd=args.containerd,
            config_file=args.daemon_config,
            address=args.address,
            check_path=not args.skip_path_check,
        )
        return _report(report)
    options = _snippet_options(args, profile)
    if mode == "merge":
        return _merge(args, options)
    sys.stdout.write(render.render(options))
    return 0


def _merge(args: argparse.Namespace, options: render.SnippetOptions) -> int:
    """Merge, check the result, and write it only if it passes (or show it, --dry-run)."""
    import tomllib

    from stream_processor.containerd import merge as cm

    path = args.merge
    backup_suffix = configfile.check_backup_suffix(
        configfile.DEFAULT_BACKUP_SUFFIX if args.backup is None else args.backup
    )
    result = cm.merge(configfile.read_text_lf(path), options, source=path, force=args.force)
    report = check.check_config(
        tomllib.loads(result.after), options.profile, source=f"{path} (merged)",
        check_path=not args.skip_path_check,
    )  # fmt: skip
    if args.dry_run:
        sys.stdout.write(result.diff() or f"{path} already holds this registration\n")
    else:
        for change in result.changes:
            sys.stdout.write(f"{'forced: ' if change.conflict else ''}{change.describe()}\n")
        sys.stdout.write(report.render())
    if report.problems:
        raise CheckFailed(
            f"{path} would not pass --check after merging ({report.problem_count()}: "
            f"{report.problems[0].message}); nothing written"
        )
    if args.dry_run:
        return 0
    if not result.changed:
        sys.stdout.write(f"{path} already holds this registration; nothing changed\n")
        return 0
    backup = configfile.write(path, result.before, result.after, backup_suffix)
    sys.stdout.write(f"wrote {path}; the previous version is {backup}\n")
    return 0
