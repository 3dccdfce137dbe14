"""Edit stage: GenRecEdit, training-free injection of cold items into a trained backbone (docs/method.md §5)."""
