"""Closed-loop evaluation of a policy on the task suite: success per task and split with 95%
intervals, open-loop token accuracy (V3), the language-swap test, videos."""
