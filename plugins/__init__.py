"""emkit's built-in plugins: trainers, generators, domains and question sets.

Each module is registered through the ``emkit`` entry-point group (setup.cfg), exactly as a
third-party plugin would be; installed, this folder is the package ``emkit.default_plugins``.
"""
