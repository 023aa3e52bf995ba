"""Compare revisions and experiments of the pipeline: DVC's metrics, params and plots, offline.

``dvc_cli`` runs the ``dvc`` CLI and parses its ``--json`` output, ``render`` turns DVC's own Vega-Lite
plot specs into PNG and a self-contained HTML page (no CDN), ``report`` writes a pull-request report
(``python -m metastases.compare.report``) and ``plots`` an offline ``dvc plots show/diff``
(``python -m metastases.compare.plots``).
"""
