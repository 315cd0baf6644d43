"""The failover loop and what it needs: routing (model name → targets), balancing (their order),
one upstream stream read as OpenAI chunks."""
