"""The Lora extension's parts: files on disk (``files``), layer matching and deltas (``layers``), the weight
patch of one batch (``patch``)."""
