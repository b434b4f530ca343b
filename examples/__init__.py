"""The example configs, installed as emkit.presets: `emkit run --preset NAME` reads NAME.toml here."""
