"""The handler a profile names (`agents.services.vendor.resolve`) and the vendor API's
examples.

Installed packages are real ones as far as importlib.metadata can tell: two test
distributions, each a ``*.dist-info`` folder with an ``entry_points.txt``, on
``sys.path`` beside the module that holds their handlers. Every failure is one line
that names the reference and says what would work; a profile reports it at load time
under ``services[i].handler``. The examples in the vendor module's docstring and the
Python in profiles/README.md run as written, each in a fresh interpreter.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.profile import ProfileError, load_profile
from agents.services.vendor import HandlerError, installed_handlers, resolve, vendor

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "acme-printer"
MODULE = "m2mesh_test_vendor_handlers"
HANDLERS = """
from agents.services.vendor import ServiceContext, vendor
from mesh.readings import Reading


@vendor.tool("tv-tool")
async def tool(ctx: ServiceContext) -> None:
    ctx.state["ran"] = True


@vendor.feed("tv-feed")
async def feed(ctx: ServiceContext) -> Reading:
    return Reading.of("level", 1)


@vendor.call("tv-call")
async def call(ctx: ServiceContext, request: bytes) -> bytes:
    return request


def helper() -> None:
    pass
"""
ENTRY_POINTS = f"""
[m2mesh.services]
tv-tool = {MODULE}:tool
tv-feed = {MODULE}:feed
tv-renamed = {MODULE}:call
tv-helper = {MODULE}:helper
tv-missing = {MODULE}:nothing
tv-gone = m2mesh_test_vendor_gone:handler
tv-twice = {MODULE}:tool

[console_scripts]
tv-not-a-service = {MODULE}:helper
"""
SECOND = f"""
[m2mesh.services]
tv-twice = {MODULE}:feed
"""


def write_distribution(site: Path, name: str, version: str, entry_points: str) -> None:
    """An installed distribution as pip leaves one: its dist-info folder."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module", autouse=True)
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two installed test distributions declaring ``m2mesh.services`` entry points."""
    site = tmp_path_factory.mktemp("site-packages")
    write_distribution(site, "m2mesh-test-vendor", "1.0", ENTRY_POINTS)
    write_distribution(site, "m2mesh-test-vendor-two", "2.0", SECOND)
    (site / f"{MODULE}.py").write_text(HANDLERS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        yield site


def failure(reference: str, kind: str) -> str:
    """The one-line error `resolve` gives for `reference`."""
    with pytest.raises(HandlerError) as info:
        resolve(reference, kind)
    message = str(info.value)
    assert "\n" not in message and message.startswith(repr(reference)), message
    return message


def test_a_bare_name_is_an_installed_packages_entry_point() -> None:
    handler = resolve("tv-tool", "tool-time")
    assert handler is vendor.get("tv-tool")
    assert resolve("tv-feed", "data-feed") is vendor.get("tv-feed")
    assert {"tv-tool", "tv-feed", "tv-twice"} <= set(installed_handlers())
    assert "tv-not-a-service" not in installed_handlers()  # another group's entry point


def test_the_other_two_forms_still_work() -> None:
    assert resolve(f"{MODULE}:tv-tool", "tool-time") is vendor.get("tv-tool")
    assert resolve("builtin:spindle", "tool-time") is vendor.get("spindle")
    assert resolve("agents.services.builtin:inspection", "call") is vendor.get("inspection")
    assert resolve("agents.services:vibration", "data-feed") is vendor.get("vibration")


@pytest.mark.parametrize(
    ("reference", "kind", "said"),
    [
        ("tv-tol", "tool-time", "no installed package declares it (did you mean 'tv-tool'?);"),
        ("spindle", "tool-time", "(did you mean 'builtin:spindle'?)"),
        ("tv-feed", "tool-time", "'tv-feed' is a data-feed handler, not tool-time"),
        ("builtin:vibration", "tool-time", "is a data-feed handler, not tool-time"),
        (
            "tv-renamed",
            "call",
            f"{MODULE}:call (from m2mesh-test-vendor 1.0) is the handler registered as"
            " 'tv-call'; an entry point must have its handler's name",
        ),
        ("tv-helper", "call", "is a function, not a handler (register it with @vendor.tool"),
        ("tv-missing", "call", f"cannot load {MODULE}:nothing (from m2mesh-test-vendor 1.0):"),
        ("tv-gone", "call", "No module named 'm2mesh_test_vendor_gone'"),
        (
            "tv-twice",
            "tool-time",
            "is declared by 2 installed packages (",
        ),
        ("builtin:spindl", "tool-time", "(did you mean 'spindle'?); the built-ins are inspection,"),
        ("builtin:tv-tool", "tool-time", "no built-in handler 'tv-tool'"),
        (
            f"{MODULE}:tv-tol",
            "tool-time",
            "(did you mean 'tv-tool'?); it registers tv-call, tv-feed",
        ),
        ("os:spindle", "tool-time", "os registers no handler 'spindle'; it registers none"),
        ("no.such.module:x", "call", "cannot import 'no.such.module' (No module named 'no')"),
        ("m2mesh-test-vendor:tv-tool", "tool-time", "expected 'NAME' (an installed package's),"),
        ("", "call", "expected 'NAME'"),
        ("builtin:", "call", "expected 'NAME'"),
    ],
)
def test_every_failure_is_one_line_saying_what_would_work(
    reference: str, kind: str, said: str
) -> None:
    assert said in failure(reference, kind)


def test_an_unknown_name_lists_the_installed_handlers() -> None:
    message = failure("tv-nothing-like-it", "call")
    listed = message.split("installed m2mesh.services handlers: ", 1)[1]
    assert {"tv-feed", "tv-tool", "tv-twice"} <= set(listed.split(", "))


def test_a_name_two_packages_declare_names_both() -> None:
    message = failure("tv-twice", "tool-time")
    assert "m2mesh-test-vendor 1.0" in message and "m2mesh-test-vendor-two 2.0" in message
    assert "or write 'package.module:tv-twice'" in message


GOOD = """
[agent]
name = "Printer"

[[services]]
id = "print-time"
kind = "tool-time"
unit = "s"
price = 3
handler = "HANDLER"
"""


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        ("tv-tol", "'tv-tol': no installed package declares it (did you mean 'tv-tool'?)"),
        ("tv-feed", "'tv-feed' is a data-feed handler, not tool-time"),
    ],
)
def test_the_profile_reports_a_bad_handler_when_it_loads(
    tmp_path: Path, handler: str, said: str
) -> None:
    path = tmp_path / "printer.toml"
    path.write_text(GOOD.replace("HANDLER", handler))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.key == "services[0].handler"
    assert str(info.value).startswith(f"{path}: services[0].handler: {said}")
    assert "\n" not in str(info.value)
    path.write_text(GOOD.replace("HANDLER", "tv-tool"))
    assert load_profile(path).services[0].handler == "tv-tool"


# -- the examples, as written ---------------------------------------------------------

DRIVER = """
import trio

from agents.services.vendor import ServiceContext, ToolHandler, FeedHandler, vendor


async def drive() -> None:
    for name in vendor.names("__main__"):
        handler = vendor.get(name)
        ctx = ServiceContext(name, "02" + "11" * 32, b"order", 0, 0.01, 1, {})
        if isinstance(handler, ToolHandler):
            await handler.run(ctx)
            if handler.stop is not None:
                await handler.stop(ctx)
            print(name, handler.kind, "stop" if handler.stop else "", ctx.state)
        elif isinstance(handler, FeedHandler):
            print(name, handler.kind, (await handler.read(ctx)).describe())
        else:
            print(name, handler.kind, (await handler.handle(ctx, b"part-7")).decode())


trio.run(drive)
"""


def run_example(code: str) -> list[str]:
    """Run `code` as a script in a fresh interpreter, then call every handler it
    registered once; the lines say what each did."""
    done = subprocess.run(
        [sys.executable, "-c", code + DRIVER],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_vendor_docstrings_example_works_as_written() -> None:
    # (`agents.services.vendor` as an attribute is the registry, which shadows the module)
    doc = importlib.import_module("agents.services.vendor").__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\nHandlers never see payments", 1)[0]
    lines = run_example(textwrap.dedent(block))
    assert re.fullmatch(
        r"coolant-temp data-feed coolant_temp = 21.5 Cel \(good, measured .*Z\)", lines[0]
    )
    assert lines[1] == "inspect call PASS part-7"
    assert lines[2] == "lathe tool-time stop {'running': False}"


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "profiles" / "README.md").read_text()
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_the_readmes_vendor_package_is_the_example_and_runs() -> None:
    handlers = (EXAMPLE / "src" / "acme_printer" / "handlers.py").read_text()
    [code] = readme_blocks("python")
    assert code in handlers  # the README shows the file (less its docstring)
    lines = run_example(code)
    assert lines[0].startswith("acme-nozzle-temp data-feed nozzle_temp = 21"), lines[0]
    assert lines[1].startswith("acme-print-time tool-time stop {'printing': False, 'printed_s'")
    tomls = readme_blocks("toml")
    assert (EXAMPLE / "pyproject.toml").read_text() in tomls
    assert (EXAMPLE / "printer.toml").read_text() in tomls
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    declared = project["project"]["entry-points"]["m2mesh.services"]
    assert declared == {
        "acme-print-time": "acme_printer.handlers:print_time",
        "acme-nozzle-temp": "acme_printer.handlers:nozzle_temperature",
    }
    profile = tomllib.loads((EXAMPLE / "printer.toml").read_text())
    assert [s["handler"] for s in profile["services"]] == list(declared)
    assert 200 < float(lines[0].split(" = ")[1].split(" ")[0]) < 230
