"""Tables, charts and reports of result rows (``results.json``: method, lambda, form, task, n, p,
hs, fa, ...). ``tables``: markdown and CSV, the AsFT-vs-l2 verdict; ``charts``: PNGs; ``paper``:
the paper's published numbers; ``build``: ``asft report`` (every output of a folder of runs)."""

from asft.report.build import collect_rows, write_report
from asft.report.charts import bar_chart, landscape_plots, sweep_chart, tradeoff_chart
from asft.report.tables import label, main_table, markdown_table, sweep_table, to_csv, verdict

__all__ = ["bar_chart", "collect_rows", "label", "landscape_plots", "main_table", "markdown_table",
           "sweep_chart", "sweep_table", "to_csv", "tradeoff_chart", "verdict", "write_report"]
