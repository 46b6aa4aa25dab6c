"""`tidepost install` / `tidepost uninstall`: tidepost as this machine's MTA (Debian).

install (as root, from a checkout; each step is skipped when already done):
  1. a Python environment everyone can read, PREFIX (/opt/tidepost), holding
     this checkout (Debian's /usr/bin/python3; python3-venv is installed
     with apt-get when missing);
  2. the system account `tidepost` (group too), home the spool, no login;
  3. /etc/tidepost/tidepost.toml from the commented system default (never
     overwritten), /etc/tidepost/aliases, /etc/default/tidepost;
  4. the spool /var/spool/tidepost and /var/log/tidepost, the account's;
  5. /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq, /usr/bin/newaliases
     and /usr/local/bin/tidepost as links to PREFIX/bin/tidepost (argv[0]
     picks the personality); another MTA's files there are set aside with
     dpkg-divert (renamed to FILE.tidepost-saved without dpkg);
  6. the systemd units of contrib/systemd in /etc/systemd/system, enabled
     and started when systemd runs.
What it did is written to /etc/tidepost/installed.json; `uninstall` undoes
exactly that (the other MTA's files come back), keeping the configuration,
the spool (queued mail, Maildirs) and the account unless `--purge`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

from tidepost.accounts import is_root, lookup
from tidepost.cli.common import EX_NOPERM, subcommand
from tidepost.control import spool as spool_layout

ETC = Path("/etc/tidepost")
MANIFEST = ETC / "installed.json"
SPOOL = Path("/var/spool/tidepost")
LOGS = Path("/var/log/tidepost")
UNITS = Path("/etc/systemd/system")
LINKS = ("/usr/sbin/sendmail", "/usr/lib/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases",
         "/usr/local/bin/tidepost")
SAVED_SUFFIX = ".tidepost-saved"
UNIT_FILES = ("tidepost.service", "tidepost-control.path", "tidepost-control.service",
              "tidepost-flush.service", "tidepost-flush.timer")
ENABLED_UNITS = ("tidepost.service", "tidepost-control.path")
SYSTEM_PYTHON = "/usr/bin/python3"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `install` and `uninstall`."""
    parser = subcommand(commands, "install", "install tidepost as this machine's MTA "
                        "(Debian, as root)", __doc__.split("\n\n", 1)[1].split("What it")[0])
    parser.add_argument("--prefix", default="/opt/tidepost",
                        help="where the Python environment goes (default: /opt/tidepost)")
    parser.add_argument("--user", default="tidepost", help="the daemon's account")
    parser.add_argument("--no-start", action="store_true",
                        help="install the systemd units but do not enable or start them")
    parser.set_defaults(run=run_install)
    remove = subcommand(commands, "uninstall", "undo `tidepost install`",
                        "Stops and removes the units, removes the links (bringing back the "
                        "files of the\nMTA that was there before) and the Python "
                        "environment.  The configuration,\nthe spool with its queued mail "
                        "and Maildirs, the log and the account stay\nunless --purge.")
    remove.add_argument("--purge", action="store_true",
                        help="also remove /etc/tidepost, the spool, the log and the account")
    remove.set_defaults(run=run_uninstall)


def run_install(args: argparse.Namespace) -> int:
    """Every install step, in order; a manifest of what was done."""
    if not is_root():
        print("tidepost install: run this as root", file=sys.stderr)
        return EX_NOPERM
    source = _checkout()
    if source is None:
        print("tidepost install: run it from a tidepost checkout (./tidepost install)",
              file=sys.stderr)
        return 64
    manifest = _read_manifest()
    manifest.update(prefix=args.prefix, user=args.user)
    prefix = Path(args.prefix)
    try:
        make_environment(prefix, source)
        _make_account(args.user, manifest)
        _write_config(manifest, args.user)
        _make_folders(args.user)
        for link in LINKS:
            _link(Path(link), prefix / "bin" / "tidepost", manifest)
        _install_units(source, manifest, start=not args.no_start)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"tidepost install: {exc}", file=sys.stderr)
        return 1
    finally:
        _write_manifest(manifest)
    print(f"tidepost installed in {prefix}; configuration {ETC / 'tidepost.toml'}, "
          f"spool {SPOOL}, log {LOGS}.")
    if not manifest.get("started"):
        print(f"Start it with `systemctl start tidepost`, or `{prefix}/bin/tidepost serve`.")
    print("Outgoing mail waits on the held route `uplink` until `tidepost link up uplink`.")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    """Undo what the manifest says install did."""
    if not is_root():
        print("tidepost uninstall: run this as root", file=sys.stderr)
        return EX_NOPERM
    manifest = _read_manifest()
    if not manifest:
        print("tidepost uninstall: nothing to do (no /etc/tidepost/installed.json)",
              file=sys.stderr)
        return 0
    _remove_units(manifest)
    prefix = Path(manifest.get("prefix", "/opt/tidepost"))
    for link in LINKS:
        _unlink(Path(link), prefix, manifest)
    shutil.rmtree(prefix, ignore_errors=True)
    if args.purge:
        for folder in (SPOOL, LOGS, ETC):
            shutil.rmtree(folder, ignore_errors=True)
        if manifest.get("created_user"):
            subprocess.run(["userdel", manifest["user"]], check=False)
            subprocess.run(["groupdel", manifest["user"]], check=False,
                           stderr=subprocess.DEVNULL)
        print("tidepost removed, with its configuration, spool, log and account")
    else:
        MANIFEST.unlink(missing_ok=True)
        print(f"tidepost removed; kept {ETC}, {SPOOL} (queued mail, Maildirs), {LOGS} and "
              f"the account {manifest.get('user')} (--purge removes them)")
    return 0


# -- install steps ---------------------------------------------------------------------


def _checkout() -> Path | None:
    """The checkout this tidepost runs from (pyproject.toml beside src/tidepost)."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").exists() and (here / "contrib").is_dir() else None


def make_environment(prefix: Path, source: Path) -> None:
    """A world-readable venv at `prefix` with the checkout `source` installed in it."""
    python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable
    if not (prefix / "bin" / "python").exists():
        if subprocess.run([python, "-c", "import ensurepip, venv"],
                          capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "install", "-y", "-q", "python3-venv"], check=True)
        subprocess.run([python, "-m", "venv", str(prefix)], check=True)
    subprocess.run([str(prefix / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check", str(source)], check=True)
    for folder, _, files in os.walk(prefix):
        os.chmod(folder, 0o755)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                os.chmod(path, os.stat(path).st_mode | 0o444)


def _make_account(user: str, manifest: dict) -> None:
    """The system account and group, unless they exist."""
    if lookup(user) is not None:
        return
    subprocess.run(["useradd", "--system", "--user-group", "--home-dir", str(SPOOL),
                    "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--comment", "tidepost mail system", user], check=True)
    manifest["created_user"] = True


def _write_config(manifest: dict, user: str) -> None:
    """/etc/tidepost/{tidepost.toml,aliases} and /etc/default/tidepost, never overwritten."""
    ETC.mkdir(mode=0o755, exist_ok=True)
    config = ETC / "tidepost.toml"
    if not config.exists():
        text = resources.files("tidepost.config").joinpath("system.toml").read_text()
        config.write_text(text.replace("@HOSTNAME@", socket.gethostname())
                          .replace("@USER@", user))
        manifest.setdefault("created", []).append(str(config))
    aliases = ETC / "aliases"
    if not aliases.exists():
        aliases.write_text("# name: target, target  (`newaliases` after a change)\n"
                           "postmaster: root\nabuse: root\n")
    default = Path("/etc/default/tidepost")
    if not default.exists() and default.parent.is_dir():
        source = _checkout()
        if source is not None:
            shutil.copy(source / "contrib" / "default" / "tidepost", default)
            manifest["default_file"] = str(default)


def _make_folders(user: str) -> None:
    """The spool (with its layout) and the log folder, owned by the daemon's account."""
    account = lookup(user)
    assert account is not None
    spool_layout.prepare(SPOOL, account)
    LOGS.mkdir(mode=0o750, exist_ok=True)
    os.chown(LOGS, account.uid, account.gid)


def _link(path: Path, target: Path, manifest: dict) -> None:
    """`path` -> `target`; another program's file there is set aside first."""
    if path.is_symlink() and Path(os.readlink(path)) == target:
        return
    if path.exists() or path.is_symlink():
        _set_aside(path, manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    manifest.setdefault("links", [])
    if str(path) not in manifest["links"]:
        manifest["links"].append(str(path))


def _set_aside(path: Path, manifest: dict) -> None:
    """Move another MTA's file away: dpkg-divert when dpkg owns it, else a rename."""
    saved = Path(str(path) + SAVED_SUFFIX)
    owned = shutil.which("dpkg-divert") and subprocess.run(
        ["dpkg", "-S", str(path)], capture_output=True).returncode == 0
    if owned:
        subprocess.run(["dpkg-divert", "--local", "--rename", "--divert", str(saved),
                        "--add", str(path)], check=True, capture_output=True)
        manifest.setdefault("diverted", []).append(str(path))
    else:
        os.rename(path, saved)
        manifest.setdefault("renamed", []).append(str(path))


def _install_units(source: Path, manifest: dict, start: bool) -> None:
    """The contrib/systemd units; enabled and started when systemd runs."""
    if not UNITS.is_dir():
        return
    for name in UNIT_FILES:
        target = UNITS / name
        if not target.exists():
            shutil.copy(source / "contrib" / "systemd" / name, target)
            manifest.setdefault("units", []).append(str(target))
    if start and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", *ENABLED_UNITS], check=True)
        manifest["started"] = True


# -- uninstall steps -------------------------------------------------------------------


def _remove_units(manifest: dict) -> None:
    """Stop and remove the units install wrote."""
    if manifest.get("started") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "disable", "--now", *ENABLED_UNITS], check=False)
    for unit in manifest.get("units", []):
        Path(unit).unlink(missing_ok=True)
    if manifest.get("units") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    if manifest.get("default_file"):
        Path(manifest["default_file"]).unlink(missing_ok=True)


def _unlink(path: Path, prefix: Path, manifest: dict) -> None:
    """Remove our link at `path` and bring back what was there before."""
    if path.is_symlink() and str(os.readlink(path)).startswith(str(prefix)):
        path.unlink()
    saved = Path(str(path) + SAVED_SUFFIX)
    if str(path) in manifest.get("diverted", []):
        subprocess.run(["dpkg-divert", "--local", "--rename", "--divert", str(saved),
                        "--remove", str(path)], check=False, capture_output=True)
    elif str(path) in manifest.get("renamed", []) and saved.exists() and not path.exists():
        os.rename(saved, path)


def _read_manifest() -> dict:
    """What an earlier install did ({} when nothing)."""
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(manifest: dict) -> None:
    """Record what install did, for uninstall."""
    ETC.mkdir(mode=0o755, exist_ok=True)
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
