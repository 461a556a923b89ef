"""Evaluation: PancapScore (offline or LLM judge), mask metrics, PNG Average Recall, caption metrics.

Entry points: :func:`pancapchain.eval.runner.evaluate` (library) and ``pancapchain eval`` (CLI). See
docs/evaluation.md for how every number is computed.
"""
