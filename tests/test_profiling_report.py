"""The report renders from a small frame; write_report writes markdown, CSV and plots."""

import json

import pandas as pd

from profiling.report import md_table, render, write_report
from profiling.sweep import RESULTS
from profiling.synthetic import failed_row, synthetic_frame


def test_render_has_every_section():
    df = pd.concat([synthetic_frame(), pd.DataFrame([failed_row()])], ignore_index=True)
    text = render(df, {"cpu": "test cpu", "cpu_count": 2, "packages": {"numpy": "x"}}, name="tiny")
    for heading in ("# Memory of training vs prediction", "## Summary", "## Targets", "## Where the bytes go",
                    "## Train / predict ratio", "## Fitted laws", "## Predicted vs measured", "## Time vs memory",
                    "## Configurations not measured", "## How this was measured"):
        assert heading in text
    assert "test cpu" in text and "timeout" in text
    assert "sqrt_n 0.50" in text                              # the fitted law, stated in the summary


def test_refused_rows_are_counted_and_listed_like_other_failures(tmp_path):
    refused = failed_row("refused", "InsufficientMemoryError: memcheck: configuration depth=9999 needs 9.0 GiB")
    df = pd.concat([synthetic_frame(), pd.DataFrame([refused, failed_row()])], ignore_index=True)
    text = render(df, name="tiny")
    assert f"{len(df)} rows: {len(df) - 2} ok, 1 refused, 1 timeout." in text
    assert "needs 9.0 GiB" in text and "`refused`: the pre-run memory check" in text
    only_refused = pd.DataFrame([refused])
    (tmp_path / RESULTS).write_text(json.dumps(refused) + "\n")
    assert "1 rows: 0 ok, 1 refused." in render(only_refused, name="none ran")
    assert "1 refused" in write_report(tmp_path).read_text()


def test_write_report_writes_markdown_csv_and_plots(tmp_path):
    rows = synthetic_frame().to_dict("records")
    (tmp_path / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_report(tmp_path)
    text = path.read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["peak_vs_batch.png", "peak_vs_depth.png", "predicted_vs_measured.png", "ratio_vs_depth.png",
                    "time_vs_memory.png"]
    assert all(f"]({name})" in text for name in pngs)
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(rows)


def test_md_table_escapes_pipes():
    assert "\\|x\\|" in md_table(pd.DataFrame({"a": ["|x|"]}))


def test_fused_rows_get_their_own_section_and_a_plain_flag():
    from .test_profiling_analysis import fused_twin
    text = render(fused_twin(synthetic_frame()), name="fused")
    assert "## Fused optimizer step" in text and "gradients at fused peak (MiB, counted)" in text
    decomposition = text[text.index("## Where the bytes go"):text.index("## Train / predict ratio")]
    assert "| fused |" in decomposition and "| no |" in decomposition and "**no**" not in decomposition
    assert "## Fused optimizer step" not in render(synthetic_frame(), name="unfused")
