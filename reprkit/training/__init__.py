"""Training, one concept per file; ``reprkit.train`` is the public entry point.

- ``loop``: ``train(cfg)``, the loop itself, read top to bottom, and its summary;
- ``step``: one step's forward pass (frozen and policy), the loss inputs, what the tracker logs;
- ``adapter``: which layers a step captures, where LoRA goes, the guards;
- ``batches``: the encoded training and eval data and the resumable micro-batch order;
- ``frozen_cache``: the frozen-model cache's key and opening it;
- ``checkpoints``: checkpoints, resume, disk checks;
- ``processes``: several processes (data parallel, FSDP2) and their collectives;
- ``errors``: ``TrainingError``.
"""
