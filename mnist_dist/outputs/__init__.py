"""What a run shows and sends out: experiment tracking (W&B, TensorBoard), pictures (plots) and report.md (report),
and Hugging Face Hub folders (hub)."""
