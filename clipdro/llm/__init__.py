"""LLM TempNet (method.md §3-4): per-token temperatures for transformers causal LMs under the token DRO loss.

Modules: ``config`` (the run's dataclasses), ``tokenizer`` (byte-level or transformers),
``data`` (text files -> packed sequences -> per-rank batches), ``model`` (LM + TempNet building
and loading), ``train`` (the training loop), ``evaluation`` (held-out perplexity and DRO
objective), ``generation`` (the TempNet logits processor), ``cli`` (`clipdro llm ...`).
Everything here needs the optional dependency transformers (``pip install 'clipdro[llm]'``);
the rest of clipdro never imports this package.
"""
