"""The report: figures, tables and report.html from a results folder. May import: config, storage,
data, analysis, train (Grad-CAM). Never Ray, never distributed/."""
