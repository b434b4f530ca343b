"""Writing a run in other tools' formats (Inspect's eval logs), for the viewers researchers already use."""
