"""`emkit label`: people label answers on the judges' scales, so the judges can be checked.

``sample`` draws each labeller's queue, stratified over model, checkpoint and the primary
judge's aligned score; ``server`` serves the labelling page (``page.html.j2``) and its JSON API
on localhost. The labels themselves are kept by emkit.labels.
"""
