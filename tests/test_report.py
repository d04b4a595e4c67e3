import base64
import re
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.figures import confusion_grid_figure, figure_png, roc_figure
from pipeline.metrics import confusion_matrices
from pipeline.report import CONTENT_SECURITY_POLICY, build_html_report
from tests.browser import WINDOW, chromium_binary, console_messages, probed_title, run_chromium, with_image_probe

RUN_LINKS = {
    "resnet18 scratch (seed 0)": "http://127.0.0.1:5000/#/experiments/1/runs/0a1b2c",
    "resnet50 pretrained (seed 0)": "https://mlflow.example.org/#/experiments/1/runs/3d4e5f?x=1&y=2",
}
NOTES = ["resnet50 scratch not run: <too slow> on 2 CPU cores & no GPU", "kappa is quadratic-weighted"]


def small_figure(color: str) -> bytes:
    figure, axis = plt.subplots(figsize=(3, 2))
    axis.plot([0, 1, 2], [1, 0, 2], color=color)
    axis.set_title(color)
    return figure_png(figure)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.DataFrame([
        {"configuration": "resnet18 scratch", "runs": 2, "test_accuracy": 0.61234, "kappa": 0.4567, "best_val_epoch": 3.0},
        {"configuration": "resnet50 <pretrained>", "runs": 1, "test_accuracy": 0.7, "kappa": np.nan, "best_val_epoch": 7.0},
    ])


@pytest.fixture(scope="module")
def figures() -> dict[str, bytes]:
    return {"Loss curves": small_figure("tab:blue"), "Accuracy & kappa": small_figure("tab:orange")}


@pytest.fixture(scope="module")
def report(table, figures) -> str:
    return build_html_report(title="DR grading <study>", summary_table=table, figures=figures,
                             run_links=RUN_LINKS, notes=NOTES)


class Attributes(HTMLParser):
    """Every (tag, attribute, value) of a page, parsed rather than grepped."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.found += [(tag, name, value or "") for name, value in attrs]


def parse(page: str) -> Attributes:
    parser = Attributes()
    parser.feed(page)
    return parser


def test_report_holds_the_table_escaped(report):
    assert "resnet18 scratch" in report and "0.6123" in report and "0.4567" in report
    assert ">3<" in report and ">7<" in report  # whole-number floats without ".000"
    assert "resnet50 &lt;pretrained&gt;" in report and "<pretrained>" not in report
    assert "<title>DR grading &lt;study&gt;</title>" in report
    table_html = report[report.index("<table"):report.index("</table>")]
    assert "nan" not in table_html.lower() and "<td></td>" in table_html  # a missing value is an empty cell


def test_report_embeds_every_figure(report, figures):
    sources = [value for tag, name, value in parse(report).found if tag == "img" and name == "src"]
    assert len(sources) == len(figures)
    prefix = "data:image/png;base64,"
    assert all(source.startswith(prefix) for source in sources)
    assert [base64.b64decode(source[len(prefix):]) for source in sources] == list(figures.values())
    for name in figures:
        assert f"<h2>{name.replace('&', '&amp;')}</h2>" in report


def test_report_lists_run_links_and_notes(report):
    hrefs = [value for tag, name, value in parse(report).found if name == "href"]
    assert hrefs == list(RUN_LINKS.values())  # parsed back unescaped, so '&' round-trips
    for label in RUN_LINKS:
        assert f">{label}</a>" in report
    assert "&lt;too slow&gt; on 2 CPU cores &amp; no GPU" in report


def test_report_has_no_external_resources(report):
    page = parse(report)
    for tag, name, value in page.found:
        if name in {"src", "srcset", "data", "poster", "background"}:
            assert value.startswith("data:image/png;base64,"), (tag, name, value[:80])
        if name == "href":
            assert tag == "a" and value in RUN_LINKS.values(), (tag, value)
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    without_links = report
    for url in RUN_LINKS.values():
        without_links = without_links.replace(url.replace("&", "&amp;"), "")
    assert not re.search(r"https?://|url\(|@import", without_links)
    assert f'content="{CONTENT_SECURITY_POLICY}"' in report


def test_report_rejects_what_it_cannot_embed_safely(table):
    with pytest.raises(ValueError, match="PNG"):
        build_html_report(title="t", summary_table=table, figures={"f": b"GIF89a..."}, run_links={})
    with pytest.raises(ValueError, match="run link"):
        build_html_report(title="t", summary_table=table, figures={}, run_links={"x": "javascript:alert(1)"})


def test_report_without_optional_parts(table):
    page = build_html_report(title="t", summary_table=table, figures={}, run_links={})
    assert "<img" not in page and 'id="runs"' not in page and 'id="notes"' not in page


def test_further_tables_follow_the_summary_under_their_headings(table):
    cross = pd.DataFrame({"dataset": ["internal test", "messidor2 <ext>"], "kappa": ["0.512 [0.401, 0.620]", "-"]})
    page = build_html_report(title="t", summary_table=table, figures={}, run_links={},
                             tables={"The champion on each dataset (95% CI)": cross})
    summary, heading = page.index("resnet18 scratch"), page.index("<h2>The champion on each dataset (95% CI)</h2>")
    tables = [page[start:page.index("</table>", start)] for start in
              [i for i in range(len(page)) if page.startswith("<table", i)]]
    assert summary < heading < page.index("0.512 [0.401, 0.620]") and len(tables) == 2
    assert "messidor2 &lt;ext&gt;" in tables[1] and "internal test" in tables[1]


# --- in a real browser -----------------------------------------------------------------------


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path, table):
    chromium_binary()
    p_referable = np.linspace(0.1, 0.9, 8)
    zeros = np.zeros(8)
    probabilities = np.column_stack([1 - p_referable, zeros, p_referable, zeros, zeros])
    figures = {
        "Referable DR ROC": figure_png(roc_figure(np.array([0, 1, 0, 3, 1, 2, 4, 2]), probabilities)),
        "Confusion matrices": figure_png(confusion_grid_figure(
            {"resnet18 scratch": confusion_matrices(np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 3, 3]))})),
        "Loss": small_figure("tab:green"),
    }
    page = build_html_report(title="DR grading", summary_table=table, figures=figures, run_links=RUN_LINKS,
                             notes=NOTES)
    report_file = tmp_path / "report.html"
    report_file.write_text(page, encoding="utf-8")

    # The page exactly as shipped: renders, and the browser has nothing to complain about.
    screenshot = tmp_path / "report.png"
    shown = run_chromium(report_file, tmp_path / "profile-1", f"--screenshot={screenshot}")
    assert console_messages(shown.stderr) == []
    assert screenshot.is_file(), shown.stderr[-3000:]
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert pixels.std() > 10  # not a blank page
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # a fair share of drawn (non-white) pixels

    # A probed copy: every image decoded by the browser.
    probed_file = tmp_path / "probed.html"
    probed_file.write_text(with_image_probe(page), encoding="utf-8")
    probed = run_chromium(probed_file, tmp_path / "profile-2", "--dump-dom")
    assert probed_title(probed.stdout) == f"images {len(figures)}/{len(figures)}"
    assert console_messages(probed.stderr) == []


@pytest.mark.slow
def test_browser_checks_catch_broken_pages(tmp_path, figures):
    # The checks above would be worthless if they could not fail: a page with an external image
    # (blocked by the policy), a corrupt embedded image and a script error must trip all of them.
    page = build_html_report(title="broken", summary_table=pd.DataFrame({"a": [1]}), figures=figures, run_links={})
    page = page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    page = page.replace("</body>", '<img src="https://example.com/x.png">'
                                   '<script>throw new Error("boom")</script></body>')
    broken_file = tmp_path / "broken.html"
    broken_file.write_text(with_image_probe(page), encoding="utf-8")
    result = run_chromium(broken_file, tmp_path / "profile", "--dump-dom")
    assert probed_title(result.stdout) == "images 1/3"
    messages = "\n".join(console_messages(result.stderr))
    assert "example.com" in messages and "Uncaught" in messages


def test_a_document_is_rendered_from_markdown_and_raw_html_in_it_stays_text(table):
    card = ("# Model card\n\n**Version 3** of `dr-resnet`\n\n| metric | test |\n|---|---|\n| kappa | 0.643 |\n\n"
            "A dataset named <script>alert(1)</script> and <b>bold</b>.\n")
    page = build_html_report(title="t", summary_table=table, figures={}, run_links={}, documents={"Card": card})
    section = page[page.index('<section class="document">'):]
    assert "<strong>Version 3</strong>" in section and "<code>dr-resnet</code>" in section
    assert "<table>" in section and "<td>0.643</td>" in section and "|---|" not in section
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<b>" not in section
