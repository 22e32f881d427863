"""The docs site as a reader's browser shows it: headless Chromium (Debian's ``chromium``) loads
the built pages from a local HTTP server and reports, per page, the size of every rendered
formula and the natural width of every image.

The site is ``site/`` when it is newer than every source of the docs (CI builds it with
``mkdocs build --strict`` just before the tests), else it is built here into a temporary folder.
Skipped, with the reason, where Chromium or the ``docs`` extra is absent.
"""

from __future__ import annotations

import ast
import functools
import html
import http.server
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Pages to load, and what each must show: formulas (MathML laid out by the browser), images.
PAGES = {
    "index.html": {"math": 0, "images": 0},
    "getting-started/index.html": {"math": 0, "images": 0},
    "tutorial/index.html": {"math": 0, "images": 2},
    "how-it-works/index.html": {"math": 20, "images": 0},
    "results/index.html": {"math": 0, "images": 0},
    "speed/index.html": {"math": 0, "images": 1},
    "api/layers/index.html": {"math": 0, "images": 0},
    "upstream/index.html": {"math": 0, "images": 0},
}
CHECK_PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const pages = %s;
function check(path) {
  return new Promise(resolve => {
    const frame = document.createElement("iframe");
    frame.style.width = "1200px";
    frame.style.height = "900px";
    frame.onload = async () => {
      const doc = frame.contentDocument;
      const images = [...doc.images];
      await Promise.all(images.map(image => image.complete ? null :
        new Promise(done => { image.onload = image.onerror = done; })));
      resolve({
        images: images.map(image => [image.alt, image.naturalWidth]),
        math: [...doc.querySelectorAll(".katex math")].map(math => {
          const box = math.getBoundingClientRect();
          return [box.width, box.height];
        }),
        katex_html_shown: [...doc.querySelectorAll(".katex-html")].filter(
          node => node.getClientRects().length > 0).length,
        raw_tex: doc.body.innerText.includes("$`") || doc.body.innerText.includes("```math"),
      });
    };
    frame.src = path;
    document.body.appendChild(frame);
  });
}
(async () => {
  const results = {};
  for (const page of pages) results[page] = await check("site/" + page);
  document.getElementById("out").textContent = JSON.stringify(results);
})();
</script></body></html>
"""


def docs_sources():
    """The files the site is built from (not Python's bytecode caches, which any run that
    imports a benchmark module rewrites)."""
    sources = [
        ROOT / "mkdocs.yml",
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").rglob("*"),
        *(ROOT / "src").rglob("*.py"),
        *(ROOT / "benchmarks").rglob("*"),
        *(ROOT / "upstream").rglob("*"),  # the "Contributing upstream" page counts the patches
    ]
    return [path for path in sources if "__pycache__" not in path.parts]


def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site: ``site/`` if it is up to date, else a fresh strict build."""
    if chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    built = ROOT / "site" / "index.html"
    newest = max(path.stat().st_mtime for path in docs_sources() if path.is_file())
    if built.is_file() and built.stat().st_mtime > newest:
        return built.parent
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("markdown_exec") is None
    ):
        pytest.skip('the docs extra is not installed (pip install -e ".[docs]")')
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    done = subprocess.run(
        # not --quiet: it silences the warnings before strict mode counts them
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # nothing but mkdocs' INFO lines: no warning, no output of an executed page (issue 24)
    noise = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not line.startswith("INFO    -  ")
    ]
    assert not noise, "\n".join(noise[-50:])
    return out


@pytest.fixture(scope="module")
def rendered(site, tmp_path_factory):
    """{page: what Chromium saw}, loading every page of PAGES through a local HTTP server."""
    served = tmp_path_factory.mktemp("served")
    (served / "site").symlink_to(site, target_is_directory=True)
    (served / "check.html").write_text(CHECK_PAGE % json.dumps(list(PAGES)))
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=60000",
                "--dump-dom",
                f"http://127.0.0.1:{server.server_address[1]}/check.html",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found and found.group(1) != "pending", done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("page", list(PAGES))
def test_formulas_render(rendered, page):
    got = rendered[page]
    assert not got["raw_tex"], f"{page} shows formula source instead of a formula"
    assert len(got["math"]) >= PAGES[page]["math"]
    empty = [box for box in got["math"] if not (box[0] > 0 and box[1] > 0)]
    assert not empty, f"{page}: {len(empty)} of {len(got['math'])} formulas have no size"
    assert got["katex_html_shown"] == 0  # only the MathML is shown (no fonts from the network)


@pytest.mark.parametrize("page", list(PAGES))
def test_images_load(rendered, page):
    got = rendered[page]
    assert len(got["images"]) >= PAGES[page]["images"], got["images"]
    broken = [alt for alt, width in got["images"] if not width > 0]
    assert not broken, f"{page}: images that did not load: {broken}"


def requirement_names(requirements, optional, seen=()):
    """Normalised distribution names of ``requirements``, following this project's own extras
    (``normflows-emerging[train,nflows]``) through ``optional``."""
    names = set()
    for requirement in requirements:
        name, _, rest = re.split(r"[\s;<>=!~]", requirement, maxsplit=1)[0].partition("[")
        name = re.sub(r"[-_.]+", "-", name).lower()
        if name == "normflows-emerging":
            for extra in rest.rstrip("]").split(","):
                if extra not in seen:
                    names |= requirement_names(optional[extra], optional, (*seen, extra))
        else:
            names.add(name)
    return names


def executed_imports():
    """Top-level modules that the executed code blocks of the docs pages import."""
    fence = re.compile(r'^```python exec="on"[^\n]*\n(.*?)^```', re.MULTILINE | re.DOTALL)
    modules = set()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for block in fence.findall(page.read_text()):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules


def test_the_docs_extra_brings_what_the_executed_pages_import():
    """Issue 24: with the docs extra alone, `mkdocs build --strict` failed (the getting-started
    page imports nflows, which only the test extra brought)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(
        [*project["dependencies"], "normflows-emerging[docs]"], project["optional-dependencies"]
    )
    distributions = importlib.metadata.packages_distributions()
    # the package, and the pages' own folders on sys.path: benchmarks/ (tables), upstream/ (series)
    local = {"normflows_emerging", "tables", "series"}
    missing = {}
    for module in sorted(executed_imports() - set(sys.stdlib_module_names) - local):
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"the docs pages import these, which the docs extra lacks: {missing}"
