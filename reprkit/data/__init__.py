"""Preference data: load, adapt formats, tokenize, collate with masks.

Every format becomes an *item*: ``{"prompt": [messages], "responses": [best, ..., worst],
"scores": [...]}``. Pair losses see ``{"prompt", "chosen", "rejected"}`` pairs made from items
(best vs worst, or best vs each other response); a pair is the K = 2 item.

>>> items = load_items("genies:alpaca_easy", split="train")          # local ../shared/data or the hub
>>> pairs = to_pairs(items, mode="best_vs_worst")
>>> encoded = encode_pairs(pairs, tokenizer, max_length=256, max_prompt_length=128)
>>> batch = collate(encoded[:4], pad_token_id=tokenizer.pad_token_id)   # chosen_/rejected_ ids, masks

One file per concern: ``items`` (the item shape, ``DataError``, the shared data folder),
``formats`` (row -> item adapters), ``sources`` (where rows come from, splits, pairs, GENIES' shifts)
``encoding`` (tokenization with truncation counts, collation) and ``layout`` (a collated batch laid
out for a forward: concatenated or shared-prompt); everything is importable from ``reprkit.data``.

Sources: ``embedded[:task]`` (shipped with reprkit), ``genies:<distribution>``,
``hh-rlhf:<subset>``, a local json / jsonl / jsonl.gz / csv / parquet file, or a hub dataset id
(``name`` or ``name:config``).
"""

from .encoding import (  # noqa: F401
    Encoded,
    collate,
    collate_ranked,
    encode_pairs,
    encode_ranked,
    render_completion,
    render_prompt,
    uses_chat,
)
from .formats import (  # noqa: F401
    ASSISTANT_TAG,
    HELPSTEER_SCORES,
    check_item,
    detect_format,
    from_behaviour,
    from_genies,
    from_hh,
    from_messages,
    from_pair,
    from_ranked,
    from_scored_rows,
    parse_transcript,
    to_items,
)
from .items import (  # noqa: F401
    DataError,
    Messages,
    prompt_key,
    shared_data_dir,
)
from .layout import pair_layout, pair_sides  # noqa: F401
from .sources import (  # noqa: F401
    genies_shifts,
    load_items,
    load_rows,
    shift_sources,
    shuffled,
    split_slice,
    to_pairs,
    without_preference,
    zip_retain_reroute,
)
