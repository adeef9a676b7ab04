"""Training LoRA on a causal LM (the public entry point; the code lives in ``reprkit.training``, one concept
per file): LoRA on a causal LM, a loss on hidden states (or log-probs), tracking vs the frozen model.

One step, top to bottom:

1. the frozen model (same weights, adapter disabled, eval mode, no grad) runs on chosen + rejected,
   stopping after the deepest layer the loss or the tracker needs (the LM head only for log-probs);
2. the policy runs on the same batch with hooks capturing those layers in the graph;
3. ``loss(LossInputs) -> (loss, metrics)``; backward; clip; optimiser and scheduler step;
4. the tracker logs per-layer cosine and norm ratio policy vs frozen, chosen and rejected,
   masked to completion tokens, with the loss terms, to ``metrics.jsonl``.

>>> from reprkit.config import TrainConfig
>>> run_dir = train(TrainConfig(loss="reprpo", steps=50))
"""

from __future__ import annotations

from .training.adapter import (  # noqa: F401
    add_lora,
    assert_changed,
    check_adapter,
    lora_config,
    not_plain_linear,
    plan_layers,
    snapshot_trainable,
)
from .training.batches import (  # noqa: F401
    load_pairs,
    micro_batches,
)
from .training.checkpoints import (  # noqa: F401
    check_disk,
    checkpoint,
    checkpoint_bytes,
    load_adapter_weights,
    load_training_state,
    save_adapter,
    save_checkpoint,
    together,
    write_failed,
)
from .training.errors import (  # noqa: F401
    TrainingError,
)
from .training.frozen_cache import (  # noqa: F401
    FINGERPRINT_ELEMENTS,
    model_fingerprint,
    open_reference_cache,
)
from .training.loop import (  # noqa: F401
    as_number,
    default_run_dir,
    discard_new_run,
    evaluate_run,
    mean_of_dicts,
    summary,
    train,
)
from .training.processes import (  # noqa: F401
    all_processes,
    broadcast_trainable,
    first_forward,
    full_state_options,
    is_sharded,
    local,
    make_accelerator,
    sync_gradients,
    training_state,
    wrap_decoder_blocks,
)
from .training.step import (  # noqa: F401
    batch_accuracy,
    forward_pair_batch,
    forward_ranked_batch,
    nonfinite_source,
    only_layers,
    preference_movement,
    track,
)


class _CallableModule(type(__import__("sys"))):
    """This module, callable as ``train``: once ``reprkit.train`` is imported, ``from reprkit import
    train`` yields the module (Python sets the package attribute to it), and calling it runs
    ``train(cfg)`` as the function would."""

    def __call__(self, cfg, model=None, tokenizer=None):
        return train(cfg, model, tokenizer)


__import__("sys").modules[__name__].__class__ = _CallableModule
