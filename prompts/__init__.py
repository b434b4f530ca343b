"""Judge prompt templates (Jinja2), one file per metric: ``<metric>.j2``.

A template sees two variables, ``question`` and ``answer``. emkit.prompts.PromptLibrary
decides which template scores which metric.
"""
