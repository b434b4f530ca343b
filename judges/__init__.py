"""Judge backends: API models through litellm, local Hugging Face models. Installed as emkit.judges."""
